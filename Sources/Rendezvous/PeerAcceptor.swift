import FoundationEssentials
import Glibc
import Support
import Transport

/// Accepts the higher ranks' connections during rendezvous. Every accepted connection is handshaken on
/// its own thread under the handshake's own short deadline while accepting goes on, so a connection
/// that says nothing (an intruder, a port scanner) delays no peer; it is refused and logged by its
/// address, never blamed on a rank.
final class PeerAcceptor: @unchecked Sendable {
    private let lock = Condition()
    private var pending: Set<Int>
    private var accepted: [Int: Connection] = [:]
    private var refused: [String] = []
    private var stopping = false
    private var loopEnded = false
    private let listener: Listener
    private let rank: Int

    /// Accepts until every expected rank has joined or `stop`/`finish` ends it.
    init(listener: Listener, rank: Int, expected: Set<Int>, identity: JobIdentity, policy: WaitPolicy,
         log: @escaping (String) -> Void) {
        self.listener = listener
        self.rank = rank
        pending = expected
        let log = UncheckedLog(log)
        startThread(name: "rendezvous-accept") { [self] in
            var backoff = Backoff(first: 1_000, growth: 2, cap: 200_000)
            while !shouldStop {
                guard let (fd, host, port) = listener.acceptOrBackOff(slice: 0.5, backoff: &backoff,
                                                                      operation: "rank \(rank) accepting peers",
                                                                      stopping: { self.shouldStop }, log: { log.call("rank \(rank): \($0)") })
                else { continue }
                let connection = Connection(fd: fd, peer: PeerDescription(host: host, port: port), policy: policy)
                startThread(name: "rendezvous-handshake") { [self] in
                    guard let peer = try? Handshake.accept(connection, identity: identity,
                                                           onRefusal: { log.call("rank \(rank): \($0)"); self.noteRefusal("\(host):\(port)") }) else { return }
                    guard claim(peer, connection) else {
                        log.call("rank \(rank): refused a second or unexpected connection claiming rank \(peer) from \(connection.peer)")
                        connection.close()
                        return
                    }
                }
            }
            lock.lock(); loopEnded = true; lock.broadcast(); lock.unlock()
        }
    }

    private var shouldStop: Bool { lock.lock(); defer { lock.unlock() }; return stopping || pending.isEmpty }

    private func noteRefusal(_ address: String) { lock.lock(); refused.append(address); lock.unlock() }

    private func claim(_ peer: Int, _ connection: Connection) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard !stopping, pending.remove(peer) != nil else { return false }
        accepted[peer] = connection
        lock.broadcast()
        return true
    }

    /// Ends the accept loop (and waits for it) without taking its connections.
    func stop() {
        lock.lock(); stopping = true; lock.unlock()
        listener.shutdown()
        lock.lock(); while !loopEnded { lock.wait() }; lock.unlock()
    }

    /// Waits until every expected rank has connected and proved itself, or throws at the deadline
    /// naming the ranks still missing (and the addresses refused meanwhile, which are not ranks).
    func finish(worldSize: Int, deadline: Deadline) throws -> [Int: Connection] {
        lock.lock()
        while !pending.isEmpty && !loopEnded && !deadline.hasPassed { lock.wait(seconds: 0.2) }
        let missing = pending.sorted(), refusedAddresses = refused, result = accepted
        lock.unlock()
        stop()
        guard missing.isEmpty else {
            let intruders = refusedAddresses.isEmpty ? "" : "; refused \(refusedAddresses.count) connection(s) that did not pass the handshake, from \(Set(refusedAddresses).sorted().joined(separator: ", "))"
            throw TransportError(.rendezvous("rendezvous timed out after \(Int(deadline.seconds)) s: rank \(rank) still waiting for connections from ranks \(missing.map(String.init).joined(separator: ", ")) of \(worldSize)\(intruders)"), operation: "rendezvous")
        }
        return result
    }
}

/// A log callback carried into threads (callers pass thread-safe printers).
struct UncheckedLog: @unchecked Sendable {
    let call: (String) -> Void
    init(_ call: @escaping (String) -> Void) { self.call = call }
}
