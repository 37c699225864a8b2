#if canImport(Glibc)
import Glibc
#endif
import CShims

// One shared segment for all the ranks of a job that runs on one host, for collectives in which every
// rank reads what every other rank wrote (the two-shot allreduce). The pairwise lanes carry byte
// streams: a step there is a copy into a ring and a copy out, and a collective of P ranks takes log2 P
// or 2(P-1) such steps, each a meeting of two processes. Here each rank copies its data into its slot
// once, and the ranks meet at phase counters: with more ranks than cores every meeting can cost a
// context switch, and two meetings per piece replace the steps.
//
// Where the ranks' cores share a cache, a slot written with ordinary stores is read from the writer's
// cache; where they do not (this project's 2-vCPU machines change between the two from one second to
// the next), each such store first waits for the readers' copies of the line to be dropped, and 4 ranks
// on 2 cores ran 1 MiB in ~1000 us instead of ~250. So, as the lanes do, the ranks choose between
// cached and non-temporal stores by measurement: each rank keeps the mean time of a long piece (copy
// in to copy out, which every rank sees about alike, since they meet twice in it) per byte for each
// kind, writes with the cheaper and tries the other one piece in 32 (the same pieces on every rank).
//
// Layout: page 0: magic u64 | ranks u64 | slot bytes u64; at 1024 + 128 r rank r's control lines (its
// phase counter u32 at 0, how many ranks sleep on that counter u32 at 64); the header is rounded up to
// whole pages. Then two halves, each `ranks` slots of `slotBytes`: consecutive pieces alternate halves,
// so a rank may write the next piece while slower ranks still read the previous one.

public final class SharedArena: @unchecked Sendable {
    static let magic: UInt64 = 0x3141_5241_5044_4453 // "SDDPARA1"
    public let ranks: Int, rank: Int, slotBytes: Int
    let base: UnsafeMutableRawPointer, mappedBytes: Int, headerBytes: Int
    /// Phases this rank has completed: the same sequence on every rank, since collectives run in order.
    private var phase: UInt32 = 0
    /// Pieces started (their parity picks the half).
    private var pieces = 0
    /// Whether this piece's slot writes use non-temporal stores.
    public private(set) var streaming = false
    /// When the current long piece started; long pieces so far.
    private var pieceStart: Double?, longPieces = 0
    /// Mean nanoseconds per byte of a long piece, [0] with cached stores, [1] non-temporal (0: not yet).
    private var costs = [0.0, 0.0]
    /// Pieces at least this long per rank are timed and may store non-temporally (the lanes' threshold).
    static let measuredPieceBytes = SharedMemoryLane.measuredWriteBytes
    /// Longest single sleep on a counter: between sleeps the waiter checks the deadline and whether the
    /// rank it waits for is still connected.
    static let sleepSliceMilliseconds: Int32 = 2

    public static func segmentBytes(ranks: Int, slotBytes: Int) -> Int { headerBytes(ranks: ranks) + 2 * ranks * slotBytes }
    static func headerBytes(ranks: Int) -> Int { (1024 + 128 * ranks + 4095) / 4096 * 4096 }

    private init(base: UnsafeMutableRawPointer, ranks: Int, rank: Int, slotBytes: Int) {
        self.base = base; self.ranks = ranks; self.rank = rank; self.slotBytes = slotBytes
        headerBytes = Self.headerBytes(ranks: ranks)
        mappedBytes = Self.segmentBytes(ranks: ranks, slotBytes: slotBytes)
    }

    deinit { munmap(base, mappedBytes) }

    /// Creates the arena (rank 0 of the host); the others open it by the returned name.
    public static func create(ranks: Int, slotBytes: Int) throws -> (arena: SharedArena, name: String) {
        precondition(ranks > 1 && slotBytes > 0 && slotBytes % 4096 == 0, "arena of \(ranks) slots of \(slotBytes) bytes")
        let (base, name) = try SharedSegment.create(bytes: segmentBytes(ranks: ranks, slotBytes: slotBytes), populate: false)
        base.storeBytes(of: UInt64(ranks), toByteOffset: 8, as: UInt64.self)
        base.storeBytes(of: UInt64(slotBytes), toByteOffset: 16, as: UInt64.self)
        ddp_store_release_u64(base.assumingMemoryBound(to: UInt64.self), magic)
        return (SharedArena(base: base, ranks: ranks, rank: 0, slotBytes: slotBytes), name)
    }

    /// Opens the arena rank 0 created, checking that its header describes the same shape.
    public static func open(name: String, ranks: Int, rank: Int, slotBytes: Int) throws -> SharedArena {
        let bytes = segmentBytes(ranks: ranks, slotBytes: slotBytes)
        let base = try SharedSegment.open(name: name, bytes: bytes, populate: false)
        guard ddp_load_acquire_u64(base.assumingMemoryBound(to: UInt64.self)) == magic,
              base.load(fromByteOffset: 8, as: UInt64.self) == UInt64(ranks),
              base.load(fromByteOffset: 16, as: UInt64.self) == UInt64(slotBytes) else {
            munmap(base, bytes)
            throw SharedSegment.Unavailable(description: "segment \(name) has another header")
        }
        return SharedArena(base: base, ranks: ranks, rank: rank, slotBytes: slotBytes)
    }

    private func counter(_ r: Int) -> UnsafeMutablePointer<UInt32> { (base + 1024 + 128 * r).assumingMemoryBound(to: UInt32.self) }
    private func sleepers(_ r: Int) -> UnsafeMutablePointer<UInt32> { (base + 1024 + 128 * r + 64).assumingMemoryBound(to: UInt32.self) }

    /// Starts the next piece of `bytes` per rank: the slots of its half, by rank, and the kind of store
    /// its writes use.
    public func beginPiece(bytes: Int) -> (Int) -> UnsafeMutableRawPointer {
        if bytes >= Self.measuredPieceBytes {
            longPieces += 1
            streaming = Self.streams(longPiece: longPieces, costs: costs)
            pieceStart = longPieces == 1 ? nil : Deadline.now()
        } else {
            streaming = false; pieceStart = nil
        }
        let half = base + headerBytes + (pieces & 1) * ranks * slotBytes
        pieces += 1
        let size = slotBytes
        return { half + $0 * size }
    }

    /// Whether long piece `n` (from 1) stores non-temporally: each kind in turn for the first pieces
    /// (after one that warms the caches up and is not measured), then the cheaper by `costs` (cached,
    /// non-temporal), the other one piece in 32. The slots are not populated (only the pages the
    /// collectives use become resident), so the first piece of each half maps its pages: the first
    /// half's is the untimed one, the second half's the first non-temporal trial. Leaving that piece
    /// out of the trials too measured slower: 4 ranks, 1 MiB, two-shot ~300 against ~240 us in nine
    /// alternating runs, the trials then picking non-temporal stores more often.
    public static func streams(longPiece n: Int, costs: [Double]) -> Bool {
        if n <= 9 { return n % 2 == 0 }
        let cheaper = costs[1] < costs[0]
        return n % 32 == 0 ? !cheaper : cheaper
    }

    /// Ends the piece begun last (after its copy out): a long one's time goes into its kind's mean.
    public func endPiece(bytes: Int) {
        guard let pieceStart else { return }
        SharedMemoryLane.fold(&costs[streaming ? 1 : 0], seconds: Deadline.now() - pieceStart, bytes: bytes)
    }

    /// Copies into this rank's slot with the piece's kind of store.
    public func write(_ destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, bytes: Int) {
        SharedSegment.copy(destination, from: source, bytes: bytes, streaming: streaming)
    }

    /// What the choice of stores has measured, nanoseconds per byte of a long piece, cached and
    /// non-temporal (0: not yet). For tests and diagnostics.
    public var measuredCosts: (cached: Double, streaming: Double) { (costs[0], costs[1]) }

    /// Marks this rank's current phase done and waits until every rank has done it. `connections[r]`
    /// reaches rank r (nil at our own): a rank that closed its connection, or a wait in which no rank
    /// moved for the policy's timeout, ends the wait with an error naming that rank.
    public func meet(connections: [Connection?], policy: WaitPolicy, operation: @autoclosure () -> String) throws {
        phase &+= 1
        ddp_store_seq_cst_u32(counter(rank), phase)
        if ddp_load_seq_cst_u32(sleepers(rank)) != 0 { _ = ddp_futex_wake(counter(rank)) }
        let spinUntil = Deadline.now() + policy.spinMicroseconds * 1e-6
        for r in 0..<ranks where r != rank {
            var deadline = Deadline(seconds: policy.timeoutSeconds)
            var seen = ddp_load_seq_cst_u32(counter(r))
            while Int32(bitPattern: seen &- phase) < 0 {
                var slept = false
                if Deadline.now() < spinUntil {
                    if policy.yieldWhileSpinning { sched_yield() }
                } else {
                    _ = ddp_fetch_add_seq_cst_u32(sleepers(r), 1)
                    if ddp_load_seq_cst_u32(counter(r)) == seen { _ = ddp_futex_wait(counter(r), seen, Self.sleepSliceMilliseconds) }
                    _ = ddp_fetch_add_seq_cst_u32(sleepers(r), UInt32.max) // minus one
                    slept = true
                }
                let now = ddp_load_seq_cst_u32(counter(r))
                if now != seen { seen = now; deadline = Deadline(seconds: policy.timeoutSeconds); continue }
                // Still behind after a sleep: gone, or silent too long? A rank that arrived and then exited
                // (its last collective done) closed its connection after its counter moved: read it again.
                if slept, try !isAlive(connections[r], deadline: deadline, operation: operation()) {
                    seen = ddp_load_seq_cst_u32(counter(r))
                    if Int32(bitPattern: seen &- phase) < 0 {
                        throw TransportError(.peerClosed(expected: 0, received: 0), operation: operation(), peer: connections[r]?.peer) // no bytes owed
                    }
                }
            }
        }
    }

    /// Throws when the deadline passed; false when the peer's connection is closed (it exited).
    private func isAlive(_ connection: Connection?, deadline: Deadline, operation: @autoclosure () -> String) throws -> Bool {
        if deadline.hasPassed {
            throw TransportError(.timedOut(seconds: deadline.seconds), operation: operation(), peer: connection?.peer)
        }
        guard let connection else { return true }
        var fds = [pollfd(fd: connection.fd, events: Int16(0x2000) /* POLLRDHUP */, revents: 0)]
        return !(poll(&fds, 1, 0) > 0 && fds[0].revents & Int16(0x2000 | Int32(POLLHUP) | Int32(POLLERR)) != 0)
    }
}
