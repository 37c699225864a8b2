#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a connection: enough for a user to find the process.
public struct PeerDescription: Sendable, Equatable, CustomStringConvertible {
    public var rank: Int?
    public var host: String
    public var port: Int
    public init(rank: Int? = nil, host: String, port: Int) { self.rank = rank; self.host = host; self.port = port }
    public var description: String {
        (rank.map { "rank \($0) at " } ?? "") + (host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
    }
}

/// Every failure of the transport, typed, with the operation, the peer and what the system said.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A system call failed: its name and errno.
        case system(call: String, errno: Int32)
        /// The peer closed the connection (EOF) after `received` of `expected` bytes.
        case peerClosed(expected: Int, received: Int)
        /// Nothing arrived or could be sent before the deadline.
        case timedOut(seconds: Double)
        /// A frame failed a check (magic, version, type, tag, length, checksum); the connection is closed.
        case badFrame(String)
        /// The peer did not prove knowledge of the job secret, or named another job or world size.
        case refused(String)
        /// A rendezvous step did not complete.
        case rendezvous(String)
    }

    public var kind: Kind
    public var operation: String
    public var peer: PeerDescription?

    public init(_ kind: Kind, operation: String, peer: PeerDescription? = nil) {
        self.kind = kind; self.operation = operation; self.peer = peer
    }

    /// Whether the peer dropped the connection (end of stream, a reset, a write after its close), as a
    /// peer that exited or a listener going away does; not a refusal, a bad frame or a timeout.
    public var isDroppedConnection: Bool {
        switch kind {
        case .peerClosed: return true
        case let .system(_, code): return code == ECONNRESET || code == EPIPE
        default: return false
        }
    }

    public var description: String {
        let who = peer.map { " with \($0)" } ?? ""
        switch kind {
        case let .system(call, code):
            return "\(operation)\(who): \(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        case let .peerClosed(expected, received):
            // 0 of 0: closed while no bytes were owed (a wait in shared memory, not a read).
            let progress = expected == 0 ? "" : " after \(received) of \(expected) bytes"
            return "\(operation)\(who): connection closed by peer\(progress) (peer exited or crashed?)"
        case let .timedOut(seconds):
            return "\(operation)\(who): timed out after \(formatSeconds(seconds)) (peer stopped responding?)"
        case let .badFrame(reason):
            return "\(operation)\(who): rejected frame: \(reason); connection closed"
        case let .refused(reason):
            return "\(operation)\(who): refused: \(reason)"
        case let .rendezvous(reason):
            return "\(operation): \(reason)"
        }
    }
}

func formatSeconds(_ s: Double) -> String {
    s >= 1 && s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
}

/// The one wrapper around system calls: retries EINTR, turns -1 into a typed error, and returns nil for
/// EAGAIN/EWOULDBLOCK (the caller waits with poll).
@inline(__always)
func systemCall(_ name: String, _ operation: @autoclosure () -> String, peer: PeerDescription?,
                _ body: () -> Int) throws -> Int? {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        if code == EAGAIN || code == EWOULDBLOCK { return nil }
        throw TransportError(.system(call: name, errno: code), operation: operation(), peer: peer)
    }
}
