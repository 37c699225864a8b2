import FoundationEssentials
import Glibc
import Support
import Transport

/// A set of ranks that run collectives together, over the job's one authenticated full mesh (at the
/// world sizes a CPU job uses, N-1 sockets per rank are cheap, and every algorithm finds its partners).
///
/// The world group holds every rank; `split(color:key:)` and `subgroup(ranks:)` (in Collectives) carve
/// sub-groups out of it that reuse the same connections: no new sockets, no new handshakes. Inside a
/// group, `rank` and `worldSize` are the group's own (0..<members.count); `members` maps them to global
/// ranks. Collectives take the group explicitly; each call gets a fresh tag that also carries the
/// group's id (12 bits of group, 20 of sequence), so a frame of one group can never be taken for a
/// frame of another.
///
/// Concurrency: one thread at a time per group. Two groups may run calls at the same time on different
/// threads when they share at most one rank, so that no connection carries both: disjoint groups, or
/// the row and column groups of a grid (tensor- and data-parallel groups of a layout). Groups that share
/// two or more ranks (the world and any sub-group, or two overlapping sub-groups) must take turns; a
/// connection used by two calls at once is a bug and traps with both connection ends named.
public final class ProcessGroup: @unchecked Sendable {
    /// This rank within the group.
    public let rank: Int
    /// Ranks in the group.
    public let worldSize: Int
    /// Global rank of each group rank.
    public let members: [Int]
    /// 0 for the world; sub-groups get ids that differ from every group sharing a connection with them.
    public let id: UInt32
    /// This process's rank in the whole job, and the job's size.
    public let globalRank: Int
    public let globalWorldSize: Int
    public let policy: WaitPolicy
    /// connections[r] talks to group rank r; nil at our own rank.
    public let connections: [Connection?]
    /// Group ranks this rank reaches through shared memory (same host); the others over TCP.
    public internal(set) var sharedMemoryPeers: [Int] = []
    /// The shared arena of a world whose ranks all run on one host (nil otherwise), which a sub-group of
    /// all the world's ranks in the world's order shares (the layouts' data-parallel group of a pure
    /// data-parallel job); other sub-groups have one once `formArena` gave them their own.
    public internal(set) var arena: SharedArena?
    /// The world's connections by global rank (sub-groups are carved from these).
    let worldConnections: [Connection?]
    let registry: GroupRegistry
    /// Check payload CRCs of bulk data frames too (headers are always checked).
    public var checksumPayloads: Bool
    /// Bytes per data frame. Large enough that headers and per-frame bookkeeping vanish, small enough
    /// that reducing one chunk overlaps the arrival of the next. Measured on loopback, 2 ranks, with
    /// header and payload in one sendmsg: 128-256 KiB gave 2.5-3.0 GB/s at 1 MiB and ~2.1 at 64 MiB,
    /// 1 MiB frames 1.6-2.4 and ~2.15.
    public var chunkBytes = 256 << 10
    /// The rendezvous store, kept to report failures: a rank that fails records why under
    /// "failed/<global rank>", so ranks that only see the fallout (a neighbour closing) can name the root cause.
    public var store: StoreClient?
    /// The rendezvous store this rank hosts (rank 0 under a launcher other than ours); serves until the
    /// group is released, so that failure reports still reach every rank.
    public var hostedStore: StoreServer?
    var sequence: UInt32 = 0
    var scratch = UnsafeMutableBufferPointer<Float>(start: nil, count: 0)
    var halfScratch = UnsafeMutableBufferPointer<UInt16>(start: nil, count: 0)

    /// The world group of a job whose connections are already made.
    public init(rank: Int, worldSize: Int, connections: [Connection?], policy: WaitPolicy, checksumPayloads: Bool = false) {
        precondition(connections.count == worldSize, "need one slot per rank")
        self.rank = rank; self.worldSize = worldSize; self.connections = connections
        self.policy = policy; self.checksumPayloads = checksumPayloads
        members = Array(0..<worldSize); id = 0
        globalRank = rank; globalWorldSize = worldSize
        worldConnections = connections
        registry = GroupRegistry()
    }

    /// A sub-group of `parent`'s job: `members` are global ranks, this rank among them. Only the
    /// group-forming calls in Collectives (which agree on `id` with every member) should call this.
    public init(carvedFrom parent: ProcessGroup, members: [Int], id: UInt32) {
        precondition(Set(members).count == members.count && members.allSatisfy { $0 >= 0 && $0 < parent.globalWorldSize },
                     "members \(members) of a job of \(parent.globalWorldSize)")
        guard let mine = members.firstIndex(of: parent.globalRank) else { preconditionFailure("rank \(parent.globalRank) is not in \(members)") }
        rank = mine; worldSize = members.count; self.members = members; self.id = id
        globalRank = parent.globalRank; globalWorldSize = parent.globalWorldSize
        worldConnections = parent.worldConnections
        connections = members.map { parent.worldConnections[$0] }
        policy = parent.policy; checksumPayloads = parent.checksumPayloads; chunkBytes = parent.chunkBytes
        store = parent.store; registry = parent.registry
        if members == Array(0..<globalWorldSize) { arena = parent.arena }
    }

    /// Gives this sub-group a shared arena of its own when every pair of its ranks talks through a lane
    /// (all on one host): collective over the group, like the world's set-up (its rank 0 creates the
    /// segment, slots the size of the lanes' rings, and gives the verdict, so all members have it or
    /// none). Returns why not when its ranks share a host and still have none (worth a line).
    public func formArena() throws -> String? {
        precondition(arena == nil && id != 0, "the world's arena is set up when it joins")
        let lanes = connections.compactMap { $0?.lane }
        let onLanes = lanes.count == worldSize - 1
        let shared = try SharedMemorySetup.arena(connections: connections, rank: rank, slotBytes: onLanes ? lanes[0].ringBytes : 0,
                                                 attachedToAll: onLanes, group: id)
        arena = shared.arena
        return onLanes ? shared.declined : nil
    }

    /// A group of one: every collective is a no-op.
    public static func single() -> ProcessGroup {
        ProcessGroup(rank: 0, worldSize: 1, connections: [nil], policy: WaitPolicy())
    }

    /// "rank 3" in the world; "rank 3 (1 of group 2: 2,3)" in a sub-group: for messages.
    public var name: String {
        id == 0 && worldSize == globalWorldSize ? "rank \(globalRank)"
            : "rank \(globalRank) (\(rank) of group \(id): \(members.map(String.init).joined(separator: ",")))"
    }

    /// The highest group id this process has taken part in creating (for agreeing on the next one).
    public var lastGroupID: UInt32 { registry.last }
    public func noteGroupID(_ id: UInt32) { registry.note(id) }

    public var exchangeSettings: ExchangeSettings {
        ExchangeSettings(chunkBytes: chunkBytes, checksumPayloads: checksumPayloads, policy: policy)
    }

    public func connection(to peer: Int) -> Connection {
        guard let c = connections[peer] else { preconditionFailure("rank \(rank) has no connection to rank \(peer)") }
        return c
    }

    deinit { scratch.deallocate(); halfScratch.deallocate() }

    /// A scratch buffer of at least `count` floats, kept between calls: a fresh allocation per
    /// collective costs a page fault per 4 KiB, which at 64 MiB was a fifth of the time.
    public func scratchFloats(_ count: Int) -> UnsafeMutableBufferPointer<Float> {
        if scratch.count < count {
            scratch.deallocate()
            scratch = .allocate(capacity: count)
            scratch.initialize(repeating: 0)
        }
        return UnsafeMutableBufferPointer(rebasing: scratch[0..<count])
    }

    /// Like scratchFloats, for 16-bit wire values (bf16-compressed collectives).
    public func scratchHalves(_ count: Int) -> UnsafeMutableBufferPointer<UInt16> {
        if halfScratch.count < count {
            halfScratch.deallocate()
            halfScratch = .allocate(capacity: count)
            halfScratch.initialize(repeating: 0)
        }
        return UnsafeMutableBufferPointer(rebasing: halfScratch[0..<count])
    }

    /// A new tag for the next collective call (the same on every rank: collectives are called in order):
    /// the group id in the top 12 bits, the call's sequence number (mod 2^20) below.
    public func nextTag() -> UInt32 {
        sequence = (sequence &+ 1) & 0xF_FFFF
        return id << 20 | sequence
    }

    /// Rendezvous through the store: every rank listens on `listenHost` (port 0, the kernel picks),
    /// publishes host:port under "addr/<rank>", waits for all others, then connects to lower ranks and
    /// accepts higher ones, each through the job handshake. Connections that fail the handshake are
    /// logged and ignored; missing ranks are named when the timeout expires.
    public static func rendezvous(store: StoreClient, rank: Int, identity: JobIdentity, listenHost: String,
                                  advertisedHost: String? = nil, policy: WaitPolicy, timeoutSeconds: Double,
                                  sharedMemoryRingBytes: Int = SharedMemorySetup.defaultRingBytes, laneStores: LaneStores = .adaptive,
                                  log: @escaping (String) -> Void = { _ in }) throws -> ProcessGroup {
        let world = identity.worldSize
        if world == 1 { return single() }
        let listener = try Listener(host: listenHost, port: 0)
        let host = advertisedHost ?? listenHost
        // Higher ranks connect to us: accept them on another thread from now on (an early connection,
        // an intruder's included, is handshaken at once) while we wait for the addresses and connect to
        // lower ranks.
        let acceptor = PeerAcceptor(listener: listener, rank: rank, expected: Set((rank + 1)..<world), identity: identity,
                                    policy: policy, log: log)
        var connections = [Connection?](repeating: nil, count: world)
        let deadline: Deadline
        do {
            try store.set("addr/\(rank)", "\(host)|\(listener.port)")
            let keys = (0..<world).map { "addr/\($0)" }
            let addresses = try store.wait(keys, timeoutSeconds: timeoutSeconds) { missing in
                let ranks = missing.compactMap { Int($0.dropFirst(5)) }
                return "waiting for ranks \(ranks.map(String.init).joined(separator: ", ")) of \(world)"
            }.map { String(decoding: $0, as: UTF8.self) }
            deadline = Deadline(seconds: timeoutSeconds)
            for peer in 0..<rank {
                let parts = addresses[peer].split(separator: "|")
                guard parts.count == 2, let port = Int(parts[1]) else {
                    throw TransportError(.rendezvous("rank \(peer) published a malformed address '\(addresses[peer])'"), operation: "rendezvous")
                }
                let description = PeerDescription(rank: peer, host: String(parts[0]), port: port)
                let fd = try Socket.connect(host: String(parts[0]), port: port, deadline: deadline, peer: description,
                                            operation: "rank \(rank) connecting to rank \(peer)")
                let connection = Connection(fd: fd, peer: description, policy: policy)
                try Handshake.connect(connection, identity: identity, rank: rank)
                connections[peer] = connection
            }
        } catch {
            acceptor.stop()
            throw error
        }
        for (peer, connection) in try acceptor.finish(worldSize: world, deadline: deadline) { connections[peer] = connection }
        let lanes = try SharedMemorySetup.run(connections: connections, rank: rank, ringBytes: sharedMemoryRingBytes, stores: laneStores)
        // Another host is the expected reason; anything else (a full /dev/shm, lanes off on one side) is
        // worth a line, since that pair then runs at loopback TCP's speed.
        let unexpected = lanes.declined.filter { $0.reason != SharedMemorySetup.anotherHost }
        if !unexpected.isEmpty {
            log("rank \(rank): TCP instead of shared memory with \(unexpected.map { "rank \($0.rank) (\($0.reason))" }.joined(separator: ", "))")
        }
        let shared = try SharedMemorySetup.arena(connections: connections, rank: rank, slotBytes: sharedMemoryRingBytes,
                                                 attachedToAll: lanes.attached.count == world - 1)
        if let reason = shared.declined, lanes.declined.isEmpty { log("rank \(rank): no shared-memory arena (\(reason))") }
        let group = ProcessGroup(rank: rank, worldSize: world, connections: connections, policy: policy)
        group.sharedMemoryPeers = lanes.attached
        group.arena = shared.arena
        group.store = store
        return group
    }

    /// Joins the job the environment describes (world size 1: a group of one, no store).
    /// `spinMicroseconds` is the program's choice of spin (a trainer passes 0); SWIFT_DDP_SPIN_US in the
    /// environment, already parsed into `env`, overrides it, as SWIFT_DDP_CHUNK_KB sets the frame size.
    public static func join(_ env: WorkerEnvironment, spinMicroseconds: Double? = nil,
                            log: @escaping (String) -> Void = { _ in }) throws -> ProcessGroup {
        if env.worldSize == 1 { return single() }
        var hosted: StoreServer?
        if env.hostsStore {
            do {
                hosted = try StoreServer(host: env.masterAddress, port: env.masterPort, identity: env.identity, bindRetrySeconds: 0)
            } catch let error as TransportError {
                let source = env.discovery.sources.first { $0.field == "master port" }?.from ?? "MASTER_PORT"
                throw TransportError(.rendezvous("rank 0 cannot host the rendezvous store on port \(env.masterPort) (\(source)): \(error); set MASTER_PORT to a free port"),
                                     operation: "hosting the store", peer: PeerDescription(host: env.masterAddress, port: env.masterPort))
            }
        }
        // Under another launcher, each rank finds its own listen address: the interface SWIFT_DDP_IFACE
        // names, else the one that routes to the master.
        var env = env
        if env.listenAddress == nil && env.discovery.rankZeroHostsStore {
            env.listenAddress = try LocalAddress.choose(interface: env.interface, master: env.masterAddress, port: env.masterPort).address
        }
        let store = try StoreClient(host: env.masterAddress, port: env.masterPort, identity: env.identity, rank: env.rank,
                                    timeoutSeconds: env.timeoutSeconds)
        // Spinning before blocking saves ~10 us per message when every rank has a core (2 ranks on 2 cores:
        // ring 4 KiB 28 us spinning vs 38 us blocking). When ranks outnumber cores a plain spin starves
        // the peer we wait for (8 ranks: 1.8 ms vs 1.3 ms blocking), but a spin that yields the core
        // between polls beats blocking (4 ranks, 4 KiB ring: 145 us vs 191-196; 8 ranks 551-650 vs 687-718).
        let spin = env.spinMicroseconds ?? spinMicroseconds ?? 50
        let policy = WaitPolicy(timeoutSeconds: env.timeoutSeconds, spinMicroseconds: spin, yieldWhileSpinning: env.oversubscribesHost)
        let group = try rendezvous(store: store, rank: env.rank, identity: env.identity, listenHost: env.listenAddress ?? env.masterAddress,
                                   policy: policy, timeoutSeconds: env.timeoutSeconds,
                                   sharedMemoryRingBytes: env.sharedMemoryRingBytes ?? SharedMemorySetup.defaultRingBytes,
                                   laneStores: env.laneStores ?? .adaptive, log: log)
        if let chunk = env.chunkBytes { group.chunkBytes = chunk }
        group.hostedStore = hosted
        return group
    }

    /// Records this rank's failure in the store and returns the root cause another rank reported, if
    /// any (best effort: the store may be gone too). When this rank merely timed out waiting for
    /// `blamed`, that peer is probably stuck waiting on someone else: give it up to a second to report,
    /// and pass its story on instead of blaming an innocent neighbour.
    public func recordFailure(_ description: String, blamed: Int? = nil, timedOut: Bool = false) -> String? {
        guard let store else { return nil }
        // Reports are stored as "<kind>|<blamed rank or ->|<text>": kind T for a timeout, E otherwise.
        // The store may be unreachable too (its host gone): after the first failed call, stop asking,
        // or every question would wait out the whole timeout.
        var reachable = true
        func report(_ peer: Int) -> FailureReport? {
            guard reachable else { return nil }
            do {
                guard let raw = try store.get("failed/\(peer)") else { return nil }
                return FailureReport(String(decoding: raw, as: UTF8.self))
            } catch {
                reachable = false
                return nil
            }
        }
        // Another rank's story is the root cause unless it is a timeout blaming us: two ranks that time
        // out at once may each wait on the other, while the real culprit is silent (stopped, or gone).
        func believable(_ r: FailureReport) -> Bool { !(r.timedOut && r.blamed == globalRank) }
        let others = (0..<globalWorldSize).filter { $0 != globalRank }.compactMap { peer in report(peer).map { (peer, $0) } }.filter { believable($0.1) }
        let root = (others.first { !$0.1.timedOut } ?? others.first).map(\.1)
        if reachable {
            let mine = FailureReport(timedOut: timedOut, blamed: blamed, text: "\(name): \(description)")
            try? store.set("failed/\(globalRank)", (root ?? mine).encoded)
        }
        var rootCause = root?.text
        if rootCause == nil, timedOut, let blamed {
            // The peer we timed out on is probably stuck waiting on someone else: give it up to a second
            // to report, and pass its story on instead of blaming an innocent neighbour.
            let deadline = Deadline(seconds: 1)
            while rootCause == nil && reachable && !deadline.hasPassed {
                if let r = report(blamed), believable(r) { rootCause = r.text }
                if rootCause == nil { usleep(20_000) }
            }
        }
        return rootCause
    }

}

/// Group ids this process has seen, shared by a world group and every group carved from it.
final class GroupRegistry: @unchecked Sendable {
    private let lock = Lock()
    private var highest: UInt32 = 0
    var last: UInt32 { lock.lock(); defer { lock.unlock() }; return highest }
    func note(_ id: UInt32) { lock.lock(); highest = max(highest, id); lock.unlock() }
}
