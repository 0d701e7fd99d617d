import InvalidationCore
import RedisClient

extension RedisEndpoint {
    /// Connects and authenticates (AUTH, SELECT) with this endpoint's credentials.
    func connect(timeoutMilliseconds: Int) throws(RedisError) -> RedisConnection {
        let socketAddress: RedisAddress
        switch address {
        case .tcp(let host, let port): socketAddress = .tcp(host: host, port: port)
        case .unix(let path): socketAddress = .unix(path: path)
        }
        let connection = try RedisConnection(address: socketAddress, timeoutMilliseconds: timeoutMilliseconds)
        try connection.handshake(username: username, password: password, database: database)
        return connection
    }
}
