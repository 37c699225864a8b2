import FoundationEssentials
import Dispatch
import Glibc
import Support
import Transport

/// The rendezvous key/value store protocol (one request frame, one reply frame):
///   request: op u8 | key blob | value blob        reply: status u8 | value blob
///   ops: 1 set, 2 get (status 1 = missing), 3 add (value = i64 delta; reply = new i64)
///   status 2 = refused, the value holds the reason (oversized key/value, unknown op).
enum StoreOp: UInt8 { case set = 1, get = 2, add = 3 }

public enum StoreLimits {
    public static let maxKeyBytes = 1024
    public static let maxValueBytes = 1 << 20
    public static let maxKeys = 100_000
}

/// A TCP key/value server for rendezvous, run by rank 0 or the launcher. Every client must pass the
/// job handshake; each connection is served by its own thread, so a client that connects and says
/// nothing delays no one.
public final class StoreServer: @unchecked Sendable {
    public let listener: Listener
    let identity: JobIdentity
    let lock = Lock()
    var values: [String: [UInt8]] = [:]
    var stopped = false
    let log: @Sendable (String) -> Void

    public var port: Int { listener.port }

    /// Served connections, so that stop can end them; keyed by an id the serving thread removes.
    var clients: [Int: Connection] = [:]
    var nextClient = 0
    let acceptLoopEnded = DispatchSemaphore(value: 0)

    /// Connections still in their handshake, oldest first. At `maxUnauthenticated` the oldest is cut off
    /// to make room: silent or slow connections cannot use up the descriptors, and a real client (whose
    /// handshake takes a millisecond) still gets in during a flood.
    var unauthenticated: [Int] = []
    public static let maxUnauthenticated = 64
    /// Whole-handshake deadline for each connection (Handshake.timeoutCap, or less for tests).
    let handshakeSeconds: Double

    /// `bindRetrySeconds`: how long a fixed port still held by a previous attempt is retried.
    public init(host: String, port: Int, identity: JobIdentity, bindRetrySeconds: Double = 5,
                handshakeSeconds: Double = Handshake.timeoutCap,
                log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        listener = try Listener(host: host, port: port, bindRetrySeconds: bindRetrySeconds)
        self.identity = identity
        self.handshakeSeconds = handshakeSeconds
        self.log = log
        startThread(name: "store-accept") { [self] in acceptLoop(); acceptLoopEnded.signal() }
    }

    /// Stops serving and releases the port before returning, so that the next attempt of a job can bind
    /// the same fixed port at once: wakes the accept loop, waits for it to end, closes the listener,
    /// and ends every client connection.
    public func stop() {
        lock.lock()
        let wasStopped = stopped
        stopped = true
        let open = Array(clients.values)
        lock.unlock()
        guard !wasStopped else { return }
        listener.shutdown()
        acceptLoopEnded.wait()
        listener.close()
        for connection in open { connection.shutdown() }
    }

    var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    /// The failure reports ranks left under "failed/<rank>" (ProcessGroup.recordFailure), by rank.
    public func failureReports() -> [Int: FailureReport] {
        lock.lock(); defer { lock.unlock() }
        var out: [Int: FailureReport] = [:]
        for (key, value) in values where key.hasPrefix("failed/") {
            if let rank = Int(key.dropFirst(7)), let report = FailureReport(String(decoding: value, as: UTF8.self)) { out[rank] = report }
        }
        return out
    }

    func acceptLoop() {
        var backoff = Backoff(first: 1_000, growth: 2, cap: 1_000_000)
        while !isStopped {
            guard let accepted = listener.acceptOrBackOff(slice: 0.5, backoff: &backoff, operation: "store accept",
                                                          stopping: { isStopped }, log: { log("store: \($0)") })
            else { continue }
            let connection = Connection(fd: accepted.fd, peer: PeerDescription(host: accepted.host, port: accepted.port),
                                        policy: WaitPolicy(timeoutSeconds: handshakeSeconds, spinMicroseconds: 0))
            lock.lock()
            if stopped { lock.unlock(); connection.close(); break }
            if unauthenticated.count >= Self.maxUnauthenticated, let oldest = clients[unauthenticated.removeFirst()] {
                log("store: cut off \(oldest.peer): \(Self.maxUnauthenticated) connections are already in their handshake")
                oldest.shutdown()
            }
            let id = nextClient
            unauthenticated.append(id)
            nextClient += 1
            clients[id] = connection
            lock.unlock()
            startThread(name: "store-client") { [self] in
                serve(connection)
                lock.lock(); clients[id] = nil; lock.unlock()
            }
        }
    }

    func serve(_ connection: Connection) {
        let handshake = Result { try Handshake.accept(connection, identity: identity, onRefusal: { [log] in log("store: \($0)") }) }
        lock.lock(); unauthenticated.removeAll { clients[$0] === connection }; lock.unlock()
        guard case .success = handshake else { return }
        // Clients wait between requests as long as the job lives: no inactivity timeout on the server side.
        connection.policy.timeoutSeconds = 365 * 86400
        while !isStopped {
            do {
                let request = try connection.receiveFrame(expecting: .storeRequest, tag: nil,
                                                          maxLength: StoreLimits.maxKeyBytes + StoreLimits.maxValueBytes + 64,
                                                          operation: "store request")
                let reply = handle(request)
                try connection.sendFrame(.storeReply, tag: 0, bytes: reply, operation: "store reply")
            } catch let error as TransportError {
                if case .peerClosed = error.kind {} else { log("store: dropping client \(connection.peer): \(error)") }
                connection.close()
                return
            } catch {
                connection.close()
                return
            }
        }
    }

    /// One request's reply (the protocol without the socket: fuzzed directly).
    public func handle(_ request: [UInt8]) -> [UInt8] {
        var reader = ByteReader(request)
        func refuse(_ reason: String) -> [UInt8] { var w = ByteWriter(); w.bytes([2]); w.blob(Array(reason.utf8)); return w.data }
        guard let op = reader.bytes(1).flatMap({ StoreOp(rawValue: $0[0]) }) else { return refuse("unknown operation") }
        guard let keyBytes = reader.blob(max: StoreLimits.maxKeyBytes) else {
            return refuse("key longer than \(StoreLimits.maxKeyBytes) bytes")
        }
        guard let value = reader.blob(max: StoreLimits.maxValueBytes), reader.atEnd else {
            return refuse("value longer than \(StoreLimits.maxValueBytes) bytes")
        }
        let key = String(decoding: keyBytes, as: UTF8.self)
        lock.lock(); defer { lock.unlock() }
        var w = ByteWriter()
        switch op {
        case .set:
            guard values[key] != nil || values.count < StoreLimits.maxKeys else { return refuse("store is full (\(StoreLimits.maxKeys) keys)") }
            values[key] = value
            w.bytes([0]); w.blob([])
        case .get:
            if let v = values[key] { w.bytes([0]); w.blob(v) } else { w.bytes([1]); w.blob([]) }
        case .add:
            var r = ByteReader(value)
            guard let delta = r.i64() else { return refuse("add needs an 8-byte delta") }
            var current: Int64 = 0
            if let old = values[key] { var o = ByteReader(old); current = o.i64() ?? 0 }
            current &+= delta
            var v = ByteWriter(); v.i64(current)
            values[key] = v.data
            w.bytes([0]); w.blob(v.data)
        }
        return w.data
    }
}

/// A store client: one authenticated connection; every call bounded by the policy's timeout.
public final class StoreClient: @unchecked Sendable {
    let connection: Connection
    let lock = Lock()
    public let address: PeerDescription

    /// Connects and runs the handshake within `timeoutSeconds`. A connection the other side drops before
    /// the handshake ends (reset or closed: the listener of a store that is going away, as between two
    /// attempts of an elastic job) is made again until then; a refusal, a bad frame or a timeout is not.
    public init(host: String, port: Int, identity: JobIdentity, rank: Int, timeoutSeconds: Double) throws {
        address = PeerDescription(host: host, port: port)
        let deadline = Deadline(seconds: timeoutSeconds)
        let operation = "connect to the rendezvous store at \(address)"
        var backoff = Backoff(first: 1_000, growth: 2, cap: 100_000)
        while true {
            let fd = try Socket.connect(host: host, port: port, deadline: deadline, peer: address, operation: operation)
            let connection = Connection(fd: fd, peer: address, policy: WaitPolicy(timeoutSeconds: timeoutSeconds, spinMicroseconds: 0))
            do {
                try Handshake.connect(connection, identity: identity, rank: rank)
                self.connection = connection
                return
            } catch let error as TransportError where error.isDroppedConnection && !deadline.hasPassed {
                connection.close()
                backoff.wait()
            }
        }
    }

    func request(_ op: StoreOp, _ key: String, _ value: [UInt8]) throws -> (status: UInt8, value: [UInt8]) {
        lock.lock(); defer { lock.unlock() }
        var w = ByteWriter()
        w.bytes([op.rawValue]); w.blob(Array(key.utf8)); w.blob(value)
        let operation = "store \(op) '\(key)'"
        try connection.sendFrame(.storeRequest, tag: 0, bytes: w.data, operation: operation)
        let reply = try connection.receiveFrame(expecting: .storeReply, tag: nil, maxLength: StoreLimits.maxValueBytes + 64,
                                                operation: operation)
        var r = ByteReader(reply)
        guard let status = r.bytes(1)?[0], let v = r.blob(max: StoreLimits.maxValueBytes), r.atEnd else {
            throw TransportError(.badFrame("malformed store reply"), operation: operation, peer: address)
        }
        if status == 2 {
            throw TransportError(.refused(String(decoding: v, as: UTF8.self)), operation: operation, peer: address)
        }
        return (status, v)
    }

    public func set(_ key: String, _ value: [UInt8]) throws { _ = try request(.set, key, value) }
    public func set(_ key: String, _ value: String) throws { try set(key, Array(value.utf8)) }

    public func get(_ key: String) throws -> [UInt8]? {
        let (status, value) = try request(.get, key, [])
        return status == 0 ? value : nil
    }

    @discardableResult
    public func add(_ key: String, _ delta: Int64) throws -> Int64 {
        var w = ByteWriter(); w.i64(delta)
        var r = ByteReader(try request(.add, key, w.data).value)
        return r.i64() ?? 0
    }

    /// Waits until every key exists; on timeout the error lists the missing ones through `describeMissing`.
    public func wait(_ keys: [String], timeoutSeconds: Double,
                     describeMissing: ([String]) -> String = { "waiting for keys \($0.joined(separator: ", "))" }) throws -> [[UInt8]] {
        let deadline = Deadline(seconds: timeoutSeconds)
        var found: [String: [UInt8]] = [:]
        var backoff = Backoff(first: 200, growth: 1.5, cap: 50_000)
        while true {
            for key in keys where found[key] == nil {
                if let v = try get(key) { found[key] = v }
            }
            let missing = keys.filter { found[$0] == nil }
            if missing.isEmpty { return keys.map { found[$0]! } }
            if deadline.hasPassed {
                throw TransportError(.rendezvous("rendezvous timed out after \(formatted(timeoutSeconds)) s: \(describeMissing(missing))"),
                                     operation: "rendezvous")
            }
            backoff.wait()
        }
    }
}

func formatted(_ s: Double) -> String { s == s.rounded() ? String(Int(s)) : String(s) }

/// What a failed rank recorded: whether it timed out, the rank it blamed, and its message.
/// Stored as "<T or E>|<blamed rank or ->|<text>".
public struct FailureReport: Sendable, Equatable {
    public var timedOut: Bool
    public var blamed: Int?
    public var text: String
    public init(timedOut: Bool, blamed: Int?, text: String) { self.timedOut = timedOut; self.blamed = blamed; self.text = text }
    public init?(_ raw: String) {
        let parts = raw.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "T" || parts[0] == "E" else { return nil }
        self.init(timedOut: parts[0] == "T", blamed: Int(parts[1]), text: String(parts[2]))
    }
    public var encoded: String { (timedOut ? "T" : "E") + "|" + (blamed.map(String.init) ?? "-") + "|" + text }
}
