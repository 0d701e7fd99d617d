/// The shipped default rules (the SPEC's table). Generated from rules/default-rules.json;
/// a test fails if the two differ. Regenerate with scripts/embed-default-rules.
enum DefaultRules {
    static let json = #"""
{
  "version": 1,
  "comment": "The SPEC's rule table. Keys are relative to the prefix (--key-prefix, default area51:). A string is an exact key; {field} is filled from the event's payload and the key is skipped when the field is null or empty. when: the field must equal one of the values. requires: the fields must be present. pattern: a SCAN MATCH glob; payload values are escaped, only the literal text may hold wildcards.",
  "events": {
    "trade_settled": [
      "wallet_balance:{wallet_address}",
      "portfolio:{telegram_id}",
      "main_menu:{telegram_id}",
      "user_state:{telegram_id}",
      "tx:{telegram_id}:{tx_hash}",
      { "key": "temp_sell_data:{telegram_id}:{sell_id}", "when": { "side": "sell" } }
    ],
    "transfer_settled": [
      "wallet_balance:{from_address}",
      "portfolio:{telegram_id}",
      "main_menu:{telegram_id}",
      "tx:{telegram_id}:{tx_hash}",
      { "key": "wallet_balance:{to_address}", "requires": ["receiver_telegram_id"] },
      "portfolio:{receiver_telegram_id}",
      "main_menu:{receiver_telegram_id}"
    ],
    "settings_changed": [
      "user_settings:{telegram_id}",
      "main_menu:{telegram_id}"
    ],
    "wallet_created": [
      "user:{telegram_id}",
      "main_menu:{telegram_id}",
      "wallet_balance:{address}"
    ],
    "wallet_changed": [
      "user:{telegram_id}",
      "wallet_balance:{old_address}",
      "wallet_balance:{address}",
      "portfolio:{telegram_id}",
      "main_menu:{telegram_id}"
    ],
    "wallet_deleted": [
      "user:{telegram_id}",
      "user_settings:{telegram_id}",
      "wallet_balance:{address}",
      "portfolio:{telegram_id}",
      "main_menu:{telegram_id}",
      "user_state:{telegram_id}",
      { "pattern": "temp_sell_data:{telegram_id}:*" }
    ],
    "manual_refresh": [
      "wallet_balance:{wallet_address}",
      "portfolio:{telegram_id}",
      "main_menu:{telegram_id}",
      "mon_price_usd"
    ],
    "table_truncated": [
      { "pattern": "wallet_balance:*", "when": { "table": ["trades", "transfers", "wallets"] } },
      { "pattern": "portfolio:*", "when": { "table": ["trades", "transfers", "wallets"] } },
      { "pattern": "main_menu:*", "when": { "table": ["trades", "transfers", "settings", "wallets"] } },
      { "pattern": "user_state:*", "when": { "table": ["trades", "wallets"] } },
      { "pattern": "tx:*", "when": { "table": ["trades", "transfers"] } },
      { "pattern": "temp_sell_data:*", "when": { "table": ["trades", "wallets"] } },
      { "pattern": "user_settings:*", "when": { "table": ["settings", "wallets"] } },
      { "pattern": "user:*", "when": { "table": ["wallets"] } }
    ]
  }
}
"""#
}
