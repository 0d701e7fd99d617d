import COpenSSL
import Glibc
import InvalidationCore

/// The TLS settings of a `rediss://` URL, as parsed (`RedisEndpoint.TLS`).
public typealias TLSConfiguration = RedisEndpoint.TLS

/// One TLS session over a connected, blocking socket, with the peer verified: its chain against
/// the trusted authorities, its name (DNS or IP address) against the host. TLS 1.2 at least.
final class TLSSession {
    private let context: OpaquePointer
    private let ssl: OpaquePointer
    private(set) var lastError: String?

    init(descriptor: Int32, configuration: TLSConfiguration, host: String, target: String) throws(RedisError) {
        func failure(_ what: String) -> RedisError {
            RedisError(code: .tlsFailed, message: "\(what): \(TLSSession.drainErrors())", target: target)
        }
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw failure("cannot create a TLS context") }
        // The context is set up completely before the session is made from it: SSL_new copies
        // the verify mode and the client certificate at that moment.
        do throws(RedisError) {
            try TLSSession.configure(context, configuration, failure)
        } catch {
            SSL_CTX_free(context)
            throw error
        }
        guard let ssl = SSL_new(context) else {
            SSL_CTX_free(context)
            throw failure("cannot create a TLS session")
        }
        self.context = context
        self.ssl = ssl
        // From here on deinit frees both.
        let name = configuration.serverName ?? host
        // An IP address is checked against the certificate's IP entries, a name against its DNS
        // entries; SNI carries names only.
        if TLSSession.isIPAddress(name) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 else { throw failure("cannot verify against the address \(name)") }
        } else {
            guard SSL_set1_host(ssl, name) == 1, ci_ssl_set_server_name(ssl, name) == 1 else { throw failure("cannot verify against the name \(name)") }
        }
        guard SSL_set_fd(ssl, descriptor) == 1 else { throw failure("cannot attach TLS to the socket") }
        let result = SSL_connect(ssl)
        if result != 1 {
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                let reason = String(cString: X509_verify_cert_error_string(verify))
                _ = TLSSession.drainErrors()
                throw RedisError(code: .tlsFailed, message: "the server's certificate was refused: \(reason) (checked against \(configuration.caFile.map { "the CA file \($0)" } ?? "the system's certificate authorities") for \(name)); set cacert= in REDIS_URL to the CA that signed it, or sni= to the name it carries", target: target)
            }
            let detail = SSL_get_error(ssl, result) == SSL_ERROR_SYSCALL && errno == EAGAIN ? "timed out" : TLSSession.drainErrors()
            throw RedisError(code: .tlsFailed, message: "TLS handshake failed: \(detail) (is this port speaking TLS? rediss:// needs the server's tls-port)", target: target)
        }
    }

    private static func configure(_ context: OpaquePointer, _ configuration: TLSConfiguration, _ failure: (String) -> RedisError) throws(RedisError) {
        _ = ci_ssl_ctx_require_tls12(context)
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        if let caFile = configuration.caFile {
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else { throw failure("cannot load the CA file \(caFile) (cacert= of REDIS_URL)") }
        } else if SSL_CTX_set_default_verify_paths(context) != 1 {
            throw failure("cannot load the system's certificate authorities")
        }
        if let certificate = configuration.certificateFile {
            guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else { throw failure("cannot load the client certificate \(certificate) (cert= of REDIS_URL)") }
            let key = configuration.keyFile ?? certificate
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else { throw failure("cannot load the client key \(key) (key= of REDIS_URL)") }
            guard SSL_CTX_check_private_key(context) == 1 else { throw failure("the client key \(key) does not match the certificate \(certificate)") }
        }
    }

    deinit {
        SSL_free(ssl)
        SSL_CTX_free(context)
    }

    /// Bytes written, or ≤ 0 with `lastError` set (and errno EAGAIN on a timeout).
    func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        let written = SSL_write(ssl, bytes.baseAddress, Int32(min(bytes.count, Int(Int32.max))))
        if written <= 0 { lastError = describe(written) }
        return Int(written)
    }

    /// Bytes read; 0 when the server closed the session; < 0 with `lastError` set (errno EAGAIN
    /// on a timeout).
    func read(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        let count = SSL_read(ssl, buffer.baseAddress, Int32(min(buffer.count, Int(Int32.max))))
        if count > 0 { return Int(count) }
        let code = SSL_get_error(ssl, count)
        if code == SSL_ERROR_ZERO_RETURN { return 0 }
        lastError = describe(count)
        return -1
    }

    private func describe(_ result: Int32) -> String {
        let code = SSL_get_error(ssl, result)
        if code == SSL_ERROR_SYSCALL || code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE {
            return errno == 0 ? "connection closed" : String(cString: strerror(errno))
        }
        return TLSSession.drainErrors()
    }

    /// OpenSSL's queued errors as one line (the queue is per thread: emptied here).
    static func drainErrors() -> String {
        var messages: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages.isEmpty ? "unknown TLS error" : messages.joined(separator: "; ")
    }

    static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
