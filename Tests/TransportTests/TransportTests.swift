import Foundation
import Rendezvous
import TestSupport
import Transport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class FrameTests: XCTestCase {
    func encoded(_ header: FrameHeader) -> [UInt8] { header.encoded() }

    func decode(_ bytes: [UInt8], maxLength: Int = FrameHeader.maxLength) -> Result<FrameHeader, FrameError> {
        bytes.withUnsafeBytes { FrameHeader.decode($0.baseAddress!, maxLength: maxLength) }
    }

    func testRoundTripAndEveryCorruptionIsRejected() {
        let header = FrameHeader(type: .data, tag: 77, length: 4096, payloadChecksum: 0xDEAD_BEEF)
        let bytes = encoded(header)
        XCTAssertEqual(try decode(bytes).get(), header)
        XCTAssertEqual(try decode(encoded(FrameHeader(type: .hello, tag: 1, length: 0))).get().payloadChecksum, nil)
        // Any single flipped bit in the header is caught (magic, version, type, length or the CRC itself).
        for byte in 0..<FrameHeader.size {
            for bit in 0..<8 {
                var corrupt = bytes
                corrupt[byte] ^= UInt8(1 << bit)
                if case .success = decode(corrupt) { XCTFail("flip of byte \(byte) bit \(bit) accepted") }
            }
        }
    }

    func testVersionTypeAndLengthChecksNameTheProblem() {
        func reencode(_ mutate: (inout [UInt8]) -> Void) -> [UInt8] {
            var bytes = encoded(FrameHeader(type: .data, tag: 1, length: 10))
            mutate(&bytes)
            // Recompute the header CRC so that the field check itself is what rejects the frame.
            let crc = bytes.withUnsafeBytes { checksum(UnsafeRawBufferPointer(rebasing: $0[0..<20])) }
            withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { bytes[20 + i] = $0[i] } }
            return bytes
        }
        func reason(_ bytes: [UInt8], maxLength: Int = FrameHeader.maxLength) -> String {
            if case .failure(let e) = decode(bytes, maxLength: maxLength) { return e.reason }
            return "accepted"
        }
        XCTAssertTrue(reason(reencode { $0[4] = 2 }).contains("protocol version 2"))
        XCTAssertTrue(reason(reencode { $0[5] = 99 }).contains("unknown message type 99"))
        XCTAssertTrue(reason(reencode { $0[15] = 0x7F }).contains("exceeds the limit"))
        XCTAssertTrue(reason(encoded(FrameHeader(type: .data, tag: 1, length: 5000)), maxLength: 4096).contains("exceeds"))
        XCTAssertTrue(reason(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)).contains("bad magic"))
    }
}

final class StoreAndHandshakeTests: XCTestCase {
    let secret = randomBytes(16)
    func identity(job: String = "job", world: Int = 4, secret: [UInt8]? = nil) -> JobIdentity {
        JobIdentity(jobID: job, worldSize: world, secret: secret ?? self.secret)
    }

    final class Log: @unchecked Sendable {
        var lines: [String] = []
        let lock = NSLock()
        func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
        var text: String { lock.lock(); defer { lock.unlock() }; return lines.joined(separator: "\n") }
    }

    /// Polls `condition` until it holds or `seconds` pass (log lines arrive from other threads).
    func waitUntil(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Deadline(seconds: seconds)
        while !condition() { if deadline.hasPassed { return false }; usleep(5_000) }
        return true
    }

    func rawConnection(port: Int, host: String = "127.0.0.1") throws -> Connection {
        let peer = PeerDescription(host: host, port: port)
        let fd = try Socket.connect(host: host, port: port, deadline: Deadline(seconds: 5), peer: peer, operation: "test connect")
        return Connection(fd: fd, peer: peer, policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0))
    }

    /// The key-count cap, through the request handler (100,000 keys over a socket would take seconds):
    /// existing keys can still be overwritten, a new one is refused.
    func testStoreRefusesKeysBeyondItsCap() throws {
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity())
        defer { server.stop() }
        func request(_ op: UInt8, _ key: String, _ value: [UInt8] = []) -> [UInt8] {
            var w = ByteWriter(); w.bytes([op]); w.blob(Array(key.utf8)); w.blob(value); return server.handle(w.data)
        }
        for i in 0..<StoreLimits.maxKeys { XCTAssertEqual(request(1, "key/\(i)", [1]).first, 0) }
        XCTAssertEqual(request(1, "key/7", [2]).first, 0, "overwriting an existing key at the cap")
        let refused = request(1, "one/too/many", [1])
        XCTAssertEqual(refused.first, 2)
        XCTAssertTrue(String(decoding: refused, as: UTF8.self).contains("store is full"))
        XCTAssertEqual(request(2, "key/7"), [0] + [1, 0, 0, 0] + [2])
    }

    func testStoreOperationsAndLimits() throws {
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity())
        defer { server.stop() }
        let client = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 0, timeoutSeconds: 5)
        try client.set("a", "hello")
        XCTAssertEqual(try client.get("a").map { String(decoding: $0, as: UTF8.self) }, "hello")
        XCTAssertNil(try client.get("missing"))
        XCTAssertEqual(try client.add("counter", 5), 5)
        XCTAssertEqual(try client.add("counter", -2), 3)
        // Limits at their boundaries: a key of exactly 1024 bytes and a value of exactly 1 MiB pass, one
        // byte more is refused.
        let longestKey = String(repeating: "k", count: StoreLimits.maxKeyBytes)
        try client.set(longestKey, "v")
        XCTAssertEqual(try client.get(longestKey), Array("v".utf8))
        XCTAssertThrowsError(try client.set(longestKey + "k", "v")) { XCTAssertTrue("\($0)".contains("key longer"), "\($0)") }
        let largest = [UInt8](repeating: 7, count: StoreLimits.maxValueBytes)
        try client.set("largest", largest)
        XCTAssertEqual(try client.get("largest"), largest)
        XCTAssertThrowsError(try client.set("big", largest + [1])) { XCTAssertTrue("\($0)".contains("value longer"), "\($0)") }
        XCTAssertThrowsError(try client.wait(["a", "b", "c"], timeoutSeconds: 0.3) { "waiting for \($0.joined(separator: ","))" }) {
            XCTAssertTrue("\($0)".contains("timed out after 0.3 s: waiting for b,c"), "\($0)")
        }
        try client.set("ok", "still works")
        XCTAssertNotNil(try client.get("ok"))
    }

    func testWrongSecretJobOrWorldSizeIsRefusedAndLogged() throws {
        let log = Log()
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity(), log: { log.add($0) })
        defer { server.stop() }
        let cases: [(JobIdentity, String)] = [
            (identity(secret: randomBytes(16)), "wrong job secret"),
            (identity(job: "other"), "job id 'other'"),
            (identity(world: 8), "world size 8"),
        ]
        for (who, reason) in cases {
            XCTAssertThrowsError(try StoreClient(host: "127.0.0.1", port: server.port, identity: who, rank: 1, timeoutSeconds: 5)) { error in
                // A wrong secret is caught by the client first (the store cannot prove the secret either).
                XCTAssertTrue("\(error)".contains("refused"), "\(error)")
                // An unauthenticated client learns nothing about the job: not its id, not its size.
                XCTAssertFalse("\(error)".contains("('job')") || "\(error)".contains("does not match"), "\(error)")
            }
            if who.secret == secret { XCTAssertTrue(waitUntil { log.text.contains(reason) }, "log lacks '\(reason)': \(log.text)") }
        }
        // A connector that does know the secret but talks to a store with another secret refuses the store.
        let good = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 2, timeoutSeconds: 5)
        try good.set("after", "refusals")
        XCTAssertNotNil(try good.get("after"))
    }

    /// The acceptor's own check of the connector's proof: a client that sends a wrong proof (instead of
    /// stopping at the acceptor's challenge, as an honest client without the secret does) is refused
    /// and logged, and the store is unharmed.
    func testStoreRefusesAWrongProof() throws {
        let log = Log()
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity(), log: { log.add($0) })
        defer { server.stop() }
        let error = handshakeWithWrongProof(try rawConnection(port: server.port), identity: identity(), rank: 1)
        XCTAssertNotNil(error, "a wrong proof was welcomed")
        XCTAssertTrue("\(error.map { "\($0)" } ?? "")".contains("refused"), "\(String(describing: error))")
        XCTAssertTrue(waitUntil { log.text.contains("wrong job secret") }, log.text)
        let good = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 2, timeoutSeconds: 5)
        try good.set("still", "serving")
    }

    /// Finding 7: the handshake deadline is total, not re-armed by each byte, and connections stuck
    /// in their handshake are bounded, so a real client is served however many silent ones there are.
    func testHandshakeDeadlineIsTotalAndUnauthenticatedConnectionsAreBounded() throws {
        let log = Log()
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity(), handshakeSeconds: 2, log: { log.add($0) })
        defer { server.stop() }
        // One byte of a hello every 0.4 s: cut off at the 2 s handshake deadline, not kept alive.
        let dripper = try rawConnection(port: server.port)
        let hello = FrameHeader(type: .hello, tag: 0, length: 64, payloadChecksum: 0).encoded()
        let start = Deadline.now()
        var closedAfter: Double?
        for byte in hello {
            var b = byte
            do { try dripper.sendAll(&b, 1, operation: "drip") } catch { closedAfter = Deadline.now() - start; break }
            var probe: UInt8 = 0
            if recv(dripper.fd, &probe, 1, Int32(MSG_DONTWAIT)) == 0 { closedAfter = Deadline.now() - start; break }
            usleep(400_000)
        }
        XCTAssertNotNil(closedAfter, "the dripping client was never cut off")
        XCTAssertLessThan(closedAfter ?? 99, 4, "cut off after \(closedAfter ?? 99) s")
        // More silent connections than the bound: the oldest are cut off to make room, and a real client still
        // gets in and is served.
        let silent = try (0..<(StoreServer.maxUnauthenticated + 6)).map { _ in try rawConnection(port: server.port) }
        XCTAssertTrue(waitUntil { log.text.contains("connections are already in their handshake") }, log.text)
        let good = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 0, timeoutSeconds: 5)
        try good.set("served", "yes")
        XCTAssertEqual(try good.get("served"), Array("yes".utf8))
        XCTAssertGreaterThan(silent.filter { c in var b: UInt8 = 0; return recv(c.fd, &b, 1, Int32(MSG_DONTWAIT)) == 0 }.count, 0, "no silent connection was cut off")
        withExtendedLifetime(silent) {}
    }

    /// Finding 7: when descriptors run out, the store logs and backs off instead of spinning a core.
    func testStoreBacksOffWhenDescriptorsRunOut() throws {
        let listener = try Listener(host: "127.0.0.1", port: 0)
        let port = listener.port
        listener.close()
        let build = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: build + "/ddp-launch")
        process.arguments = ["--master-port", String(port), "--numa-bind", "none", "--nproc-per-node", "1", "--", "/bin/sleep", "5"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // The store is up once a connection gets through (Socket.connect retries until then).
        Glibc.close(try Socket.connect(host: "127.0.0.1", port: port, deadline: Deadline(seconds: 10),
                                       peer: PeerDescription(host: "127.0.0.1", port: port), operation: "store up"))
        // And its rank is running: a limit lowered while the launcher was still spawning it failed the
        // spawn itself ("Bad file descriptor"), which is not what this test is about.
        func hasChild(_ pid: Int32) -> Bool {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.contains { entry in
                guard Int32(entry) != nil, let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                return stat[stat.index(after: close)...].split(separator: " ").dropFirst().first == Substring(String(pid))
            }
        }
        let spawnDeadline = Deadline(seconds: 10)
        while !hasChild(process.processIdentifier) && !spawnDeadline.hasPassed { usleep(10_000) }
        XCTAssertTrue(hasChild(process.processIdentifier), "the launcher started no rank within 10 s")
        // Leave the running launcher 20 descriptors more than it holds now: fewer than the 64 connections
        // the store lets sit in their handshake, so a flood runs it out of descriptors.
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/fd").count) ?? 0
        XCTAssertGreaterThan(open, 0)
        XCTAssertEqual(try runToEnd("/usr/bin/prlimit", ["--pid", String(process.processIdentifier), "--nofile=\(open + 20)"]).status, 0)
        var connections: [Connection] = []
        for _ in 0..<100 {
            let peer = PeerDescription(host: "127.0.0.1", port: port)
            guard let fd = try? Socket.connect(host: "127.0.0.1", port: port, deadline: Deadline(seconds: 1), peer: peer, operation: "flood") else { break }
            connections.append(Connection(fd: fd, peer: peer, policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0)))
        }
        defer { withExtendedLifetime(connections) {} }
        func cpuSeconds() -> Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return 0 }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return (Double(fields[11]) ?? 0) / 100 + (Double(fields[12]) ?? 0) / 100 // utime + stime, in ticks of 1/100 s
        }
        let before = cpuSeconds()
        sleep(2)
        let used = cpuSeconds() - before
        process.waitUntilExit()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(connections.count, 100)
        XCTAssertTrue(output.contains("Too many open files") && output.contains("retrying in"), output)
        XCTAssertLessThan(used, 0.5, "the launcher used \(used) s of CPU in 2 s while out of descriptors")
        XCTAssertEqual(process.terminationStatus, 0, output)
    }

    /// Finding 10: with frame authentication a relay that alters, replays or drops a frame is caught;
    /// without it, a payload bit flipped by a relay that fixes nothing else passes when bulk data has no
    /// CRC (what docs/reliability.md says each mode protects).
    func testAuthenticatedFramesCatchTamperingThatCRCsMiss() throws {
        func pair() -> (Connection, Connection) {
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
            for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
            let policy = WaitPolicy(timeoutSeconds: 2, spinMicroseconds: 0)
            return (Connection(fd: fds[0], peer: PeerDescription(rank: 0, host: "a", port: 1), policy: policy),
                    Connection(fd: fds[1], peer: PeerDescription(rank: 1, host: "b", port: 2), policy: policy))
        }
        let settings = ExchangeSettings(chunkBytes: 4096, checksumPayloads: false, policy: WaitPolicy(timeoutSeconds: 2, spinMicroseconds: 0))
        let hello = randomBytes(40), nonce = randomBytes(32)
        /// Sends `values` from a sender through a relay that may alter the bytes; returns what arrives.
        func relay(authenticated: Bool, values: [Float], alter: (inout [UInt8]) -> Void) throws -> [Float] {
            let (sender, tap) = pair(), (inject, receiver) = pair()
            if authenticated {
                sender.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: true)
                receiver.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: false)
            }
            try values.withUnsafeBytes { try exchangeMessages(sending: [OutgoingMessage(sender, tag: 5, bytes: $0)], receiving: [], settings: settings, operation: "send") }
            var wire = [UInt8](repeating: 0, count: 1 << 16)
            let got = wire.withUnsafeMutableBytes { recv(tap.fd, $0.baseAddress, $0.count, 0) }
            wire = Array(wire[0..<max(got, 0)])
            alter(&wire)
            try wire.withUnsafeBytes { try inject.sendAll($0.baseAddress!, $0.count, operation: "relay") }
            var out = [Float](repeating: .nan, count: values.count)
            try out.withUnsafeMutableBytes { try exchangeMessages(sending: [], receiving: [IncomingMessage(receiver, tag: 5, buffer: $0)], settings: settings, operation: "receive") }
            return out
        }
        let values = (0..<100).map { Float($0) }
        // Untouched, both modes deliver the values.
        XCTAssertEqual(try relay(authenticated: true, values: values) { _ in }, values)
        XCTAssertEqual(try relay(authenticated: false, values: values) { _ in }, values)
        // One payload bit flipped on the way.
        let flip: (inout [UInt8]) -> Void = { $0[FrameHeader.size + 40] ^= 0x01 }
        XCTAssertThrowsError(try relay(authenticated: true, values: values, alter: flip)) {
            XCTAssertTrue("\($0)".contains("authentication tag mismatch"), "\($0)")
        }
        XCTAssertNotEqual(try relay(authenticated: false, values: values, alter: flip), values, "without authentication the flip passes")
        // A frame replayed: the counter makes the copy fail even though its bytes are genuine.
        XCTAssertThrowsError(try {
            let (sender, tap) = pair(), (inject, receiver) = pair()
            sender.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: true)
            receiver.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: false)
            for _ in 0..<2 { try values.withUnsafeBytes { try exchangeMessages(sending: [OutgoingMessage(sender, tag: 5, bytes: $0)], receiving: [], settings: settings, operation: "send") } }
            var wire = [UInt8](repeating: 0, count: 1 << 16)
            let got = wire.withUnsafeMutableBytes { recv(tap.fd, $0.baseAddress, $0.count, 0) }
            let first = Array(wire[0..<(got / 2)])
            // Deliver the first frame twice (the second copy replaces the genuine second frame).
            try (first + first).withUnsafeBytes { try inject.sendAll($0.baseAddress!, $0.count, operation: "relay") }
            var out = [Float](repeating: .nan, count: values.count)
            for _ in 0..<2 {
                try out.withUnsafeMutableBytes { try exchangeMessages(sending: [], receiving: [IncomingMessage(receiver, tag: 5, buffer: $0)], settings: settings, operation: "receive") }
            }
        }()) { XCTAssertTrue("\($0)".contains("authentication tag mismatch"), "\($0)") }
        // Mixed modes are refused at the handshake, with the reason in the acceptor's log.
        let log = Log()
        var strict = identity(); strict.authenticateFrames = true
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: strict, log: { log.add($0) })
        defer { server.stop() }
        XCTAssertThrowsError(try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 0, timeoutSeconds: 5))
        XCTAssertTrue(waitUntil { log.text.contains("frame authentication is on here but off at the peer") }, log.text)
        let good = try StoreClient(host: "127.0.0.1", port: server.port, identity: strict, rank: 0, timeoutSeconds: 5)
        try good.set("authenticated", "yes")
        XCTAssertEqual(try good.get("authenticated"), Array("yes".utf8))
    }

    /// A pipeline stage sends on one thread while it receives on another over the same connection: the
    /// two directions are claimed apart, and authenticated frames keep a counter per direction. 4 MiB
    /// each way, more than the socket buffers, so both threads really wait on the same descriptor.
    func testOneThreadSendsWhileAnotherReceivesOnOneConnection() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        let policy = WaitPolicy(timeoutSeconds: 20, spinMicroseconds: 0)
        let a = Connection(fd: fds[0], peer: PeerDescription(rank: 1, host: "b", port: 2), policy: policy)
        let b = Connection(fd: fds[1], peer: PeerDescription(rank: 0, host: "a", port: 1), policy: policy)
        let hello = randomBytes(40), nonce = randomBytes(32)
        a.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: true)
        b.frameKeys = FrameKeys.derive(secret: secret, hello: hello, acceptorNonce: nonce, connector: false)
        let settings = ExchangeSettings(chunkBytes: 256 << 10, checksumPayloads: true, policy: policy)
        let count = 1 << 20
        let fromA = (0..<count).map { Float($0 % 9973) }, fromB = (0..<count).map { Float(-($0 % 7919)) }
        let failures = Log()
        // Each side: one thread sends three messages, another receives three, at the same time.
        func side(_ c: Connection, sending values: [Float], expecting: [Float], name: String) -> [@Sendable () -> Void] {
            let sender: @Sendable () -> Void = {
                do { for tag in 1...3 { try values.withUnsafeBytes { try exchangeMessages(sending: [OutgoingMessage(c, tag: UInt32(tag), bytes: $0)], receiving: [], settings: settings, operation: "\(name) send") } } }
                catch { failures.add("\(name) send: \(error)") }
            }
            let receiver: @Sendable () -> Void = {
                var out = [Float](repeating: .nan, count: count)
                do {
                    for tag in 1...3 {
                        try out.withUnsafeMutableBytes { try exchangeMessages(sending: [], receiving: [IncomingMessage(c, tag: UInt32(tag), buffer: $0)], settings: settings, operation: "\(name) receive") }
                        if out != expecting { failures.add("\(name) received wrong values for tag \(tag)") }
                    }
                } catch { failures.add("\(name) receive: \(error)") }
            }
            return [sender, receiver]
        }
        let threads = side(a, sending: fromA, expecting: fromB, name: "a") + side(b, sending: fromB, expecting: fromA, name: "b")
        let done = DispatchGroup()
        let finished = Log()
        for (i, body) in threads.enumerated() {
            done.enter()
            Thread.detachNewThread { body(); finished.add("\(i)"); done.leave() }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "threads did not finish: \(finished.text)")
        XCTAssertEqual(failures.text, "")
    }

    func testGarbageSilenceBadVersionAndOversizedFramesDoNotDisturbTheStore() throws {
        let log = Log()
        let server = try StoreServer(host: "127.0.0.1", port: 0, identity: identity(), log: { log.add($0) })
        defer { server.stop() }
        let silent = try rawConnection(port: server.port) // connects and says nothing
        let garbage = try rawConnection(port: server.port)
        let text = Array("GET / HTTP/1.1\r\nHost: swift-ddp\r\n\r\n".utf8)
        try text.withUnsafeBytes { try garbage.sendAll($0.baseAddress!, $0.count, operation: "garbage") }
        let badVersion = try rawConnection(port: server.port)
        var header = FrameHeader(type: .hello, tag: 0, length: 0).encoded()
        header[4] = 9
        let crc = header.withUnsafeBytes { checksum(UnsafeRawBufferPointer(rebasing: $0[0..<20])) }
        withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { header[20 + i] = $0[i] } }
        try header.withUnsafeBytes { try badVersion.sendAll($0.baseAddress!, 24, operation: "bad version") }
        let oversized = try rawConnection(port: server.port)
        let big = FrameHeader(type: .hello, tag: 0, length: 200 << 20).encoded()
        try big.withUnsafeBytes { try oversized.sendAll($0.baseAddress!, 24, operation: "oversized") }

        // A real client is served at once while the silent one still hangs around.
        let start = Deadline.now()
        let client = try StoreClient(host: "127.0.0.1", port: server.port, identity: identity(), rank: 0, timeoutSeconds: 5)
        try client.set("k", "v")
        XCTAssertEqual(try client.get("k").map { String(decoding: $0, as: UTF8.self) }, "v")
        XCTAssertLessThan(Deadline.now() - start, 2)
        // The garbage senders are disconnected: reading from them hits EOF.
        for (connection, name) in [(garbage, "garbage"), (badVersion, "bad version"), (oversized, "oversized")] {
            var byte: UInt8 = 0
            XCTAssertThrowsError(try connection.receiveAll(&byte, 1, operation: name), name)
        }
        for reason in ["bad magic", "protocol version 9", "exceeds the limit"] {
            XCTAssertTrue(waitUntil { log.text.contains(reason) }, "store log lacks '\(reason)':\n\(log.text)")
        }
        withExtendedLifetime(silent) {}
    }

    /// The launcher's check of a fixed store port binds without listening. A port someone listens on is
    /// refused with bind's EADDRINUSE; a free one passes and stays free; and a peer that connects while
    /// the checks run is refused (ECONNREFUSED, which connectors retry), never accepted. The listening
    /// probe this replaces took a remote rank's early connection and reset it on close (seen once in
    /// MultiHostTests' three hosts); its window is a few microseconds, which this loop does not reliably
    /// hit, so the test shows the check's contract rather than reproducing that race.
    func testStorePortCheckBindsWithoutListening() throws {
        let busy = try Listener(host: "127.0.0.1", port: 0)
        XCTAssertThrowsError(try Listener.checkBindable(host: "127.0.0.1", port: busy.port)) { error in
            guard let error = error as? TransportError, case .system("bind", EADDRINUSE) = error.kind else {
                return XCTFail("\(error)")
            }
        }
        let port = busy.port
        busy.close()
        final class Tally: @unchecked Sendable { var accepted = 0, attempts = 0 } // one writer; read after `done`
        let tally = Tally(), checking = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            checking.signal()
            let deadline = Date().addingTimeInterval(0.5)
            while Date() < deadline { tally.attempts += 1; if Self.connects(port: port) { tally.accepted += 1 } }
            done.signal()
        }
        checking.wait()
        var checks = 0
        while done.wait(timeout: .now()) == .timedOut { try Listener.checkBindable(host: "127.0.0.1", port: port); checks += 1 }
        XCTAssertGreaterThan(checks, 100)
        XCTAssertGreaterThan(tally.attempts, 100)
        XCTAssertEqual(tally.accepted, 0, "a connection was accepted while only the check held the port")
        XCTAssertFalse(Self.connects(port: port), "the check left something listening")
    }

    /// A store client whose connection is reset during the handshake (the listener of a store that is
    /// going away, as between two attempts of an elastic job) connects again until its deadline, and
    /// reaches the store that binds the port next.
    func testStoreClientRetriesAConnectionResetDuringTheHandshake() throws {
        let going = try Listener(host: "127.0.0.1", port: 0)
        let port = going.port
        final class Next: @unchecked Sendable { var server: StoreServer?; var resets = 0 } // written before `ready`
        let next = Next(), ready = DispatchSemaphore(value: 0)
        let identity = identity()
        DispatchQueue.global().async {
            defer { ready.signal() }
            // Take the client's first connection and reset it (linger 0: close sends RST), then give the
            // port up to a real store.
            if let (fd, _, _) = try? going.accept(deadline: Deadline(seconds: 10), operation: "test accept") {
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                usleep(20_000) // the client's hello is on its way or in
                close(fd)
                next.resets += 1
            }
            going.close()
            next.server = try? StoreServer(host: "127.0.0.1", port: port, identity: identity, bindRetrySeconds: 5)
        }
        let client = try StoreClient(host: "127.0.0.1", port: port, identity: identity, rank: 0, timeoutSeconds: 10)
        ready.wait()
        defer { next.server?.stop() }
        XCTAssertEqual(next.resets, 1)
        XCTAssertNotNil(next.server)
        try client.set("after-reset", "yes")
        XCTAssertEqual(try client.get("after-reset").map { String(decoding: $0, as: UTF8.self) }, "yes")
    }

    /// Whether a TCP connect to 127.0.0.1:port completes.
    static func connects(port: Int) -> Bool {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    func testIPv6Loopback() throws {
        guard (try? Listener(host: "::1")) != nil else { throw XCTSkip("IPv6 loopback is not available here") }
        let server = try StoreServer(host: "::1", port: 0, identity: identity())
        defer { server.stop() }
        let client = try StoreClient(host: "::1", port: server.port, identity: identity(), rank: 0, timeoutSeconds: 5)
        try client.set("v6", "yes")
        XCTAssertNotNil(try client.get("v6"))
        XCTAssertTrue(client.address.description.hasPrefix("[::1]:"))
    }

    func testEnvironmentErrorsNameTheVariable() {
        XCTAssertEqual(try WorkerEnvironment.fromProcess([:]).worldSize, 1)
        let base = ["WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                    "SWIFT_DDP_SECRET": String(repeating: "0f", count: 16)]
        XCTAssertNoThrow(try WorkerEnvironment.fromProcess(base))
        for (key, value, name) in [("RANK", "2", "RANK"), ("WORLD_SIZE", "zero", "WORLD_SIZE"), ("MASTER_PORT", "70000", "MASTER_PORT"),
                                   ("SWIFT_DDP_SECRET", "xyz", "SWIFT_DDP_SECRET"), ("SWIFT_DDP_TIMEOUT", "-1", "SWIFT_DDP_TIMEOUT")] {
            var env = base
            env[key] = value
            XCTAssertThrowsError(try WorkerEnvironment.fromProcess(env)) { XCTAssertEqual(($0 as? EnvironmentError)?.variable, name) }
        }
    }
}
