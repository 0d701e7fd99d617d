/// The kinds of event the migration's triggers write to `cache_invalidation.events`,
/// with the payload fields each carries. The rules file may only name these kinds and fields:
/// a typo in a rules file is refused at start-up instead of silently deleting nothing.
public enum EventKind: String, CaseIterable, Sendable, Hashable {
    case tradeSettled = "trade_settled"
    case transferSettled = "transfer_settled"
    case settingsChanged = "settings_changed"
    case walletCreated = "wallet_created"
    case walletChanged = "wallet_changed"
    case walletDeleted = "wallet_deleted"
    case manualRefresh = "manual_refresh"
    case tableTruncated = "table_truncated"

    /// Payload fields the triggers write for this kind (all JSON strings or null).
    public var payloadFields: [String] {
        switch self {
        case .tradeSettled:
            return ["telegram_id", "wallet_address", "tx_hash", "side", "sell_id", "status", "trade_id"]
        case .transferSettled:
            return ["telegram_id", "from_address", "to_address", "tx_hash", "receiver_telegram_id", "status", "transfer_id"]
        case .settingsChanged:
            return ["telegram_id"]
        case .walletCreated, .walletDeleted:
            return ["telegram_id", "address"]
        case .walletChanged:
            return ["telegram_id", "old_address", "address"]
        case .manualRefresh:
            return ["telegram_id", "wallet_address"]
        case .tableTruncated:
            return ["table"]
        }
    }

    /// Kind names as the SQL layer spells them, in declaration order.
    public static var allNames: [String] { allCases.map(\.rawValue) }
}
