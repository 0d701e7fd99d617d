import CacheInvalidator
import Foundation
import Glibc
import InvalidationCore
import RedisClient
import Testing

/// `rediss://` against a real `redis-server --tls-port`, with certificates made by the openssl
/// tool: a CA that signed the server's certificate (for 127.0.0.1 and localhost) and a client's,
/// and a second CA that signed nothing here.
@Suite("Redis over TLS", .serialized)
struct RedisTLSTests {
    /// The certificates, made once per test process.
    final class Certificates: Sendable {
        let directory: String
        var ca: String { directory + "/ca.pem" }
        var otherCA: String { directory + "/other-ca.pem" }
        var serverCertificate: String { directory + "/server.pem" }
        var serverKey: String { directory + "/server.key" }
        var clientCertificate: String { directory + "/client.pem" }
        var clientKey: String { directory + "/client.key" }

        init() throws {
            directory = try TestServers.get().directory + "/tls"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let openssl = TestServers.which("openssl") ?? "/usr/bin/openssl"
            func run(_ arguments: [String]) throws {
                let status = try TestServers.spawnAndWait(openssl, arguments, outputPath: directory + "/openssl.log")
                guard status == 0 else { throw TestServers.TestServerError(description: "openssl \(arguments.prefix(2)) failed; see \(directory)/openssl.log") }
            }
            for name in ["ca", "other-ca"] {
                try run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test \(name)",
                         "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).pem"])
            }
            try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: directory + "/server.ext", atomically: true, encoding: .utf8)
            for (name, extensions) in [("server", ["-extfile", directory + "/server.ext"]), ("client", [])] {
                try run(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(name)", "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr"])
                try run(["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", ca, "-CAkey", directory + "/ca.key", "-CAcreateserial",
                         "-days", "2", "-out", "\(directory)/\(name).pem"] + extensions)
            }
            // redis-server runs as this user and reads the key.
            _ = chmod(serverKey, 0o644)
        }

        static let shared = Result { try Certificates() }
    }

    /// A TLS-only redis-server (`--port 0`), its keyspace notifications on.
    static func startServer(_ certificates: Certificates, clientsMustAuthenticate: Bool = false) throws -> Int {
        let port = TestServers.freePort()
        _ = try TestServers.get().startExtraRedis(port: port, extraArguments: [
            "--port", "0", "--tls-port", "\(port)", "--tls-cert-file", certificates.serverCertificate, "--tls-key-file", certificates.serverKey,
            "--tls-ca-cert-file", certificates.ca, "--tls-auth-clients", clientsMustAuthenticate ? "yes" : "no"], probe: false)
        try awaitCondition("the TLS server answers", timeout: 10) { seen in
            do {
                let connection = try RedisConnection(address: .tcp(host: "127.0.0.1", port: port),
                                                     tls: TLSConfiguration(caFile: certificates.ca, certificateFile: certificates.clientCertificate, keyFile: certificates.clientKey))
                return try connection.command([Array("PING".utf8)]) == .status("PONG")
            } catch {
                seen = "\(error)"
                return false
            }
        }
        return port
    }

    /// What the worker does: connect and authenticate as REDIS_URL says.
    static func connect(_ url: String) throws(RedisError) -> RedisConnection {
        let endpoint = try! RedisEndpoint.parse(url)
        guard case .tcp(let host, let port) = endpoint.address else { fatalError("a TCP URL") }
        return try RedisConnection(address: .tcp(host: host, port: port), tls: endpoint.tls)
    }

    @Test func theWorkerInvalidatesOverTLSWithTheRightCA() throws {
        let certificates = try Certificates.shared.get()
        let port = try Self.startServer(certificates)
        defer { try? TestServers.get().killExtraRedis(port: port) }
        let url = "rediss://127.0.0.1:\(port)/0?cacert=\(certificates.ca)"
        let harness = try Harness()
        let redis = try Self.connect(url)
        try harness.seed(["portfolio:31", "tx:31:0xtls"], redis: redis)
        harness.startWorker { $0.redis = try! RedisEndpoint.parse(url) }
        try harness.sql(DeliveryTests.settledTrade(31, "0xtls"))
        try harness.waitUntilProcessed()
        #expect(try harness.deleted(among: ["portfolio:31", "tx:31:0xtls"], redis: redis) == ["portfolio:31", "tx:31:0xtls"])
        // The name checked is the host's: localhost is in the certificate too.
        _ = try Self.connect("rediss://localhost:\(port)/0?cacert=\(certificates.ca)")
        harness.stopWorker()
    }

    @Test func aServerSignedByAnotherCAIsRefusedAndTheErrorSaysWhatToSet() throws {
        let certificates = try Certificates.shared.get()
        let port = try Self.startServer(certificates)
        defer { try? TestServers.get().killExtraRedis(port: port) }
        for url in ["rediss://127.0.0.1:\(port)/0?cacert=\(certificates.otherCA)", "rediss://127.0.0.1:\(port)/0"] {
            let error = #expect(throws: RedisError.self) { try Self.connect(url) }
            #expect(error?.code == .tlsFailed && error?.message.contains("the server's certificate was refused") == true, "\(String(describing: error))")
            #expect(error?.message.contains("cacert=") == true)
        }
        // A name the certificate does not carry.
        let wrongName = #expect(throws: RedisError.self) { try Self.connect("rediss://127.0.0.1:\(port)/0?cacert=\(certificates.ca)&sni=cache.example") }
        #expect(wrongName?.message.contains("certificate was refused") == true, "\(String(describing: wrongName))")

        // The worker says so and is not ready; `check` fails with the same reason.
        let harness = try Harness()
        let endpoint = try RedisEndpoint.parse("rediss://127.0.0.1:\(port)/0?cacert=\(certificates.otherCA)")
        harness.startWorker { $0.redis = endpoint }
        try harness.waitForLogLines(containing: "the server's certificate was refused", count: 1)
        #expect(!Readiness.of(harness.worker!.statistics.snapshot).ready)
        var check = HealthCheck(configuration: harness.configuration())
        check.configuration.redis = endpoint
        let finding = check.run().first { $0.subject == "redis" }
        #expect(finding?.ok == false && finding?.detail.contains("certificate was refused") == true, "\(String(describing: finding))")
        harness.stopWorker()
    }

    @Test func aServerThatRequiresClientCertificatesGetsOne() throws {
        let certificates = try Certificates.shared.get()
        let port = try Self.startServer(certificates, clientsMustAuthenticate: true)
        defer { try? TestServers.get().killExtraRedis(port: port) }
        let without = #expect(throws: RedisError.self) {
            let connection = try Self.connect("rediss://127.0.0.1:\(port)/0?cacert=\(certificates.ca)")
            _ = try connection.command([Array("PING".utf8)])
        }
        #expect(without != nil)
        let with = try Self.connect("rediss://127.0.0.1:\(port)/0?cacert=\(certificates.ca)&cert=\(certificates.clientCertificate)&key=\(certificates.clientKey)")
        #expect(try with.command([Array("PING".utf8)]) == .status("PONG"))
    }

    @Test func tlsToAPlaintextPortSaysSo() throws {
        let error = #expect(throws: RedisError.self) { try Self.connect("rediss://127.0.0.1:\(try TestServers.get().redisPort)/0") }
        #expect(error?.code == .tlsFailed && error?.message.contains("is this port speaking TLS?") == true, "\(String(describing: error))")
    }
}
