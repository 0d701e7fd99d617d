import InvalidationCore
import Testing

@Suite("HTTPConnectionTable: whom the status endpoint drops when full")
struct HTTPConnectionTableTests {
    @Test func admitsUpToCapacityWithIncreasingIDs() {
        var table = HTTPConnectionTable(capacity: 3)
        #expect(table.admit() == .admitted(0))
        #expect(table.admit() == .admitted(1))
        #expect(table.admit() == .admitted(2))
        #expect(table.count == 3)
        #expect(table.stage(of: 1) == .awaitingHead)
    }

    @Test func whenFullTheOldestConnectionWaitingForItsHeadIsDropped() {
        var table = HTTPConnectionTable(capacity: 3)
        for _ in 0..<3 { _ = table.admit() }
        table.answering(0)
        #expect(table.admit() == .admittedEvicting(3, evicted: 1), "0 is being answered; 1 is the oldest idle one")
        #expect(table.stage(of: 1) == nil)
        #expect(table.count == 3)
        #expect(table.admit() == .admittedEvicting(4, evicted: 2))
    }

    @Test func anAnsweredConnectionIsDroppedBeforeAnyWaitingOne() {
        var table = HTTPConnectionTable(capacity: 3)
        for _ in 0..<3 { _ = table.admit() }
        table.answering(2)
        table.answered(2)
        #expect(table.admit() == .admittedEvicting(3, evicted: 2), "2 was served; 0 and 1 may still be probes typing")
        #expect(table.admit() == .admittedEvicting(4, evicted: 0))
    }

    @Test func whenEveryConnectionIsBeingAnsweredTheNewcomerIsRefused() {
        var table = HTTPConnectionTable(capacity: 2)
        for id in 0..<2 {
            _ = table.admit()
            table.answering(HTTPConnectionTable.ID(id))
        }
        #expect(table.admit() == .refused)
        #expect(table.count == 2)
        table.closed(0)
        #expect(table.admit() == .admitted(2), "a closed slot is reused at once")
    }

    @Test func closingTwiceOrAfterBeingDroppedIsHarmless() {
        var table = HTTPConnectionTable(capacity: 1)
        _ = table.admit()
        #expect(table.admit() == .admittedEvicting(1, evicted: 0))
        table.closed(0)
        table.answering(0)
        table.answered(0)
        #expect(table.stage(of: 0) == nil, "a dropped connection's late events do not bring it back")
        #expect(table.count == 1)
        table.closed(1)
        table.closed(1)
        #expect(table.count == 0)
    }
}

@Suite("HTTPHeadReader: a head gathered from any slicing")
struct HTTPHeadReaderTests {
    static let probe = Array("GET /readyz HTTP/1.1\r\nHost: 10.0.0.7:9187\r\nUser-Agent: kube-probe/1.30\r\n\r\n".utf8)

    @Test func oneByteAtATimeGivesTheSameHeadAsOneChunk() {
        var whole = HTTPHeadReader()
        #expect(whole.append(Self.probe) == .complete(HTTPRequestHead(method: "GET", path: "/readyz")))
        var dribbled = HTTPHeadReader()
        for (i, byte) in Self.probe.enumerated() {
            let outcome = dribbled.append([byte])
            if i < Self.probe.count - 1 {
                #expect(outcome == .incomplete, "byte \(i)")
            } else {
                #expect(outcome == .complete(HTTPRequestHead(method: "GET", path: "/readyz")))
            }
        }
    }

    @Test func aBadRequestLineIsRefusedAsSoonAsItsLineEnds() {
        var reader = HTTPHeadReader()
        #expect(reader.append(Array("GET /readyz HTTP/9.9\r\n".utf8)) == .incomplete, "the head has not ended yet")
        guard case .refused(505, _) = reader.append(Array("\r\n".utf8)) else { Issue.record("not refused"); return }
    }

    @Test func keepsAtMostTheCapAndRefusesBeyondIt() {
        var reader = HTTPHeadReader()
        #expect(reader.append(Array("GET /metrics HTTP/1.1\r\nX-Big: ".utf8)) == .incomplete)
        let outcome = reader.append([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))
        #expect(outcome == .refused(status: 431, reason: "request head over 8192 bytes"))
        #expect(reader.bytes.count == HTTPRequestHead.maximumBytes)
        var exact = HTTPHeadReader()
        let fits = Array("GET /metrics HTTP/1.1\r\nX: ".utf8)
        let filler = [UInt8](repeating: UInt8(ascii: "a"), count: HTTPRequestHead.maximumBytes - fits.count - 4)
        #expect(exact.append(fits + filler + Array("\r\n\r\nGET /more".utf8)) == .complete(HTTPRequestHead(method: "GET", path: "/metrics")), "a head of exactly the cap is accepted")
    }
}

@Suite("HTTPResponse: the bytes on the wire")
struct HTTPResponseTests {
    @Test func statusLineHeadersAndBody() {
        #expect(String(decoding: HTTPResponse.text(503, "not ready: redis unreachable").bytes, as: UTF8.self)
            == "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 29\r\nConnection: close\r\n\r\nnot ready: redis unreachable\n")
        #expect(String(decoding: HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: []).bytes, as: UTF8.self)
            == "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        #expect(String(decoding: HTTPResponse.text(431, "x").bytes.prefix(47), as: UTF8.self) == "HTTP/1.1 431 Request Header Fields Too Large\r\nC")
    }
}
