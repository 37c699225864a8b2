#if canImport(Glibc)
import Glibc
#endif
import Transport

/// Moves the connections between ranks of one host onto shared-memory lanes (SharedMemoryLane.swift),
/// right after the rendezvous built the mesh. Three phases, so that no rank ever waits on one that
/// waits on it: every rank offers a segment to each lower rank (sends only), answers each higher rank's
/// offer (its offers were all sent in phase one), then reads the answers to its own offers. A pair
/// whose host identities differ (other hosts, or network namespaces standing in for them), or where
/// either side turned lanes off, or where /dev/shm is short, stays on TCP: the answer says why.
public enum SharedMemorySetup {
    /// 1 MiB per direction: four 256 KiB frames in flight, as the socket buffers allow; 2 MiB of
    /// /dev/shm per pair of local ranks.
    public static let defaultRingBytes = 1 << 20
    /// The reason a pair on two hosts stays on TCP: expected, so not worth a log line.
    public static let anotherHost = "another host"

    /// What happened with each peer: attached, or the reason it stays on TCP (nil for our own rank).
    public struct Outcome: Sendable {
        public var attached: [Int] = []
        public var declined: [(rank: Int, reason: String)] = []
    }

    public static func run(connections: [Connection?], rank: Int, ringBytes: Int, stores: LaneStores = .adaptive) throws -> Outcome {
        let identity = HostIdentity.current
        let operation = "shared-memory set-up (rank \(rank))"
        var outcome = Outcome()
        var created: [Int: (lane: SharedMemoryLane, name: String)] = [:]
        defer { for (_, c) in created { shm_unlink(c.name) } }
        // Phase 1: offers to lower ranks (an empty name offers nothing, and still keeps the pair in step).
        for peer in 0..<rank {
            guard let connection = connections[peer] else { continue }
            var offer = ByteWriter()
            var reason = ""
            if ringBytes > 0, identity != nil {
                do {
                    created[peer] = try SharedMemoryLane.create(ringBytes: ringBytes)
                } catch { reason = "\(error)" }
            } else {
                reason = ringBytes == 0 ? "turned off (SWIFT_DDP_SHM_KB=0)" : "host identity unreadable (/proc)"
            }
            offer.string(identity ?? "")
            offer.string(created[peer]?.name ?? ""); offer.i64(Int64(ringBytes)); offer.string(reason)
            try connection.sendFrame(.laneOffer, tag: 0, bytes: offer.data, operation: operation)
        }
        // Phase 2: answers to higher ranks.
        for peer in (rank + 1)..<connections.count {
            guard let connection = connections[peer] else { continue }
            var reader = ByteReader(try connection.receiveFrame(expecting: .laneOffer, tag: 0, maxLength: 4096, operation: operation))
            guard let theirs = reader.string(), let name = reader.string(), let bytes = reader.i64(), let theirReason = reader.string(),
                  reader.atEnd else {
                throw malformed("malformed shared-memory offer", from: connection, operation: operation)
            }
            var lane: SharedMemoryLane?
            var reason = ""
            if identity != nil && !theirs.isEmpty && theirs != identity { reason = anotherHost }
            else if name.isEmpty { reason = "rank \(peer): \(theirReason)" }
            else if ringBytes == 0 { reason = "rank \(rank): turned off (SWIFT_DDP_SHM_KB=0)" }
            else if identity == nil || theirs != identity { reason = "host identity unreadable (/proc)" }
            else if bytes != Int64(ringBytes) { reason = "ring sizes differ (SWIFT_DDP_SHM_KB: \(bytes >> 10) at rank \(peer), \(ringBytes >> 10) at rank \(rank))" }
            else {
                do {
                    lane = try SharedMemoryLane.open(name: name, ringBytes: ringBytes)
                    // Mapped: the name is no longer needed, and unlinking here too leaves nothing behind
                    // even if the creator dies before reading our answer.
                    shm_unlink(name)
                } catch { reason = "rank \(rank): \(error)" }
            }
            var answer = ByteWriter()
            answer.bytes([lane == nil ? 0 : 1]); answer.string(reason)
            try connection.sendFrame(.laneAnswer, tag: 0, bytes: answer.data, operation: operation)
            if let lane {
                lane.stores = stores
                connection.attach(lane)
                outcome.attached.append(peer)
            } else {
                outcome.declined.append((peer, reason))
            }
        }
        // Phase 3: the answers to our offers.
        for peer in 0..<rank {
            guard let connection = connections[peer] else { continue }
            var reader = ByteReader(try connection.receiveFrame(expecting: .laneAnswer, tag: 0, maxLength: 4096, operation: operation))
            guard let flag = reader.bytes(1), flag[0] <= 1, let reason = reader.string(), reader.atEnd else {
                throw malformed("malformed shared-memory answer", from: connection, operation: operation)
            }
            if flag[0] == 1 {
                guard let lane = created[peer]?.lane else {
                    throw malformed("the peer attached to a shared-memory segment never offered", from: connection, operation: operation)
                }
                lane.stores = stores
                connection.attach(lane)
                outcome.attached.append(peer)
            } else {
                outcome.declined.append((peer, reason.isEmpty ? "declined" : reason))
            }
        }
        outcome.attached.sort()
        outcome.declined.sort { $0.rank < $1.rank }
        return outcome
    }

    /// A set-up frame that does not parse: the connection is closed (nothing after it can be trusted)
    /// and the error names the peer.
    static func malformed(_ what: String, from connection: Connection, operation: String) -> TransportError {
        connection.close()
        return TransportError(.badFrame(what), operation: operation, peer: connection.peer)
    }

    /// Sets up the arena of a job whose ranks all share one host (SharedArena.swift), right after the
    /// lanes: rank 0 offers a segment to every rank (an empty name when it is not attached to all, or
    /// lanes are off, or /dev/shm is short), each answers whether it opened it and is itself attached to
    /// all, and rank 0 tells everyone the verdict, so that every rank has an arena or none does. Slots are
    /// `slotBytes` (the lanes' ring size). Returns nil for a job across hosts, without a word; the reason
    /// for anything else. A sub-group sets up its own over its connections with `group` (its id) in the
    /// frames' tags, so that no frame of one group's set-up is taken for another's.
    public static func arena(connections: [Connection?], rank: Int, slotBytes: Int, attachedToAll: Bool,
                             group: UInt32 = 0) throws -> (arena: SharedArena?, declined: String?) {
        let operation = "shared-memory arena set-up (rank \(rank)\(group == 0 ? "" : " of group \(group)"))", ranks = connections.count
        let offerTag = group << 20 | 1, verdictTag = group << 20 | 2
        if rank == 0 {
            var created: (arena: SharedArena, name: String)?
            var reason: String?
            if attachedToAll && slotBytes > 0 {
                do { created = try SharedArena.create(ranks: ranks, slotBytes: slotBytes) } catch { reason = "rank 0: \(error)" }
            }
            defer { if let created { shm_unlink(created.name) } }
            for peer in 1..<ranks {
                var offer = ByteWriter()
                offer.string(created?.name ?? "")
                try connections[peer]!.sendFrame(.laneOffer, tag: offerTag, bytes: offer.data, operation: operation)
            }
            var accepted = created != nil
            for peer in 1..<ranks {
                let connection = connections[peer]!
                var reader = ByteReader(try connection.receiveFrame(expecting: .laneAnswer, tag: offerTag, maxLength: 4096, operation: operation))
                guard let flag = reader.bytes(1), flag[0] <= 1, let theirReason = reader.string(), reader.atEnd else {
                    throw malformed("malformed shared-memory arena answer", from: connection, operation: operation)
                }
                if flag[0] == 0 && accepted { accepted = false; reason = theirReason.isEmpty ? nil : "rank \(peer): \(theirReason)" }
            }
            for peer in 1..<ranks {
                try connections[peer]!.sendFrame(.laneAnswer, tag: verdictTag, bytes: [accepted ? 1 : 0], operation: operation)
            }
            return (accepted ? created?.arena : nil, accepted ? nil : reason)
        }
        let connection = connections[0]!
        var reader = ByteReader(try connection.receiveFrame(expecting: .laneOffer, tag: offerTag, maxLength: 4096, operation: operation))
        guard let name = reader.string(), reader.atEnd else {
            throw malformed("malformed shared-memory arena offer", from: connection, operation: operation)
        }
        var opened: SharedArena?, reason = ""
        if !name.isEmpty && attachedToAll {
            do { opened = try SharedArena.open(name: name, ranks: ranks, rank: rank, slotBytes: slotBytes) } catch { reason = "\(error)" }
        }
        var answer = ByteWriter()
        answer.bytes([opened == nil ? 0 : 1]); answer.string(reason)
        try connection.sendFrame(.laneAnswer, tag: offerTag, bytes: answer.data, operation: operation)
        let verdict = try connection.receiveFrame(expecting: .laneAnswer, tag: verdictTag, maxLength: 1, operation: operation)
        guard verdict.count == 1, verdict[0] <= 1 else {
            throw malformed("malformed shared-memory arena verdict", from: connection, operation: operation)
        }
        return (verdict[0] == 1 ? opened : nil, nil)
    }
}
