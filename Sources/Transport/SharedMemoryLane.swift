#if canImport(Glibc)
import Glibc
#endif
import CShims
import Support

// Ranks on one host exchange their bytes through shared memory instead of loopback TCP: a byte pushed
// into a loopback socket is copied into the kernel, then out again, with a system call each way; here
// it is copied once into a ring that the peer reads. The lane carries exactly the byte stream the
// socket would (the same frames, checksums and MAC tags), so everything above the connection's
// non-blocking primitives is unchanged. The TCP connection stays open beside it for two jobs: a peer
// that sleeps is woken by one doorbell byte on it, and a peer that dies closes it, so a wait still ends
// with the dead rank's name instead of hanging.
//
// Segment layout (one per pair of ranks, created by the higher rank, unlinked as soon as both mapped it):
//   page 0: magic u64 | ring bytes u64 | ring 0 control at 1024 | ring 1 control at 2048
//   then ring 0's bytes (creator -> opener), then ring 1's (opener -> creator).
// A ring's control block: tail u64 (bytes ever written, producer's) at 0, head u64 (bytes ever read,
// consumer's) at 128, consumer-sleeping u32 at 256, producer-sleeping u32 at 384, whether the latest
// long write used non-temporal stores u32 at 512 (producer's), the consumer's measured read costs of
// cached and non-temporal bytes (ns per byte, f64 bits) at 640 and 648 (own cache lines).

/// Which host and namespaces this process runs in: two ranks share memory only when these match (the
/// same boot, network namespace and mount namespace, so /dev/shm is the same and "another host" made
/// of a network namespace stays another host).
public enum HostIdentity {
    public static let current: String? = {
        func read(_ path: String) -> String? { readTextFile(path)?.split(separator: "\n").first.map(String.init) }
        func link(_ path: String) -> String? {
            var buffer = [CChar](repeating: 0, count: 128)
            let n = readlink(path, &buffer, buffer.count - 1)
            guard n > 0 else { return nil }
            return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        guard let boot = read("/proc/sys/kernel/random/boot_id"), let net = link("/proc/self/ns/net"),
              let mount = link("/proc/self/ns/mnt") else { return nil }
        return "\(boot) \(net) \(mount) uid \(getuid())"
    }()
}

/// How a lane's writer stores bytes into its ring (SWIFT_DDP_LANE_STORES).
public enum LaneStores: String, Sendable, CaseIterable {
    /// Measured per lane: for writes of 16 KiB or more, cached or non-temporal, whichever cost less per
    /// byte in recent writes here plus the peer's reads of them; shorter writes cached.
    case adaptive = "auto"
    /// Ordinary stores: the bytes stay in this core's cache, where the reader fetches them.
    case cached
    /// Non-temporal stores for writes of 4 KiB or more: the bytes go to memory, and the reader's copies
    /// of the lines are dropped without a round trip per line.
    case streaming
}

/// Two single-producer single-consumer byte rings in a shared mapping, one per direction.
public final class SharedMemoryLane: @unchecked Sendable {
    static let magic: UInt64 = 0x314D_4853_5044_4453 // "SDDPSHM1"
    static let headerBytes = 4096
    /// Longest single sleep of a waiter on a lane. A doorbell is a byte on the socket, and two threads
    /// (one sending, one receiving on the same connection) may drain each other's: the slice bounds
    /// what such a stolen wake-up costs.
    public static let sleepSliceMilliseconds: Int32 = 2
    public let ringBytes: Int
    let base: UnsafeMutableRawPointer
    let mappedBytes: Int
    /// Ring this side writes and ring it reads (0: creator -> opener).
    let outgoing: Ring, incoming: Ring
    /// How writes store their bytes (set before first use).
    public var stores = LaneStores.adaptive
    /// Writes this long or longer are timed under `adaptive` (shorter ones use cached stores).
    public static let measuredWriteBytes = 16 << 10
    /// Nanoseconds per byte of recent long writes with each kind of store, [0] cached and [1] non-temporal
    /// (0: not measured yet), and how many long writes there were: touched only by the thread that writes
    /// (one at a time per lane). The same for this side's long reads, by the kind the peer stored them with.
    private var writeCosts = [0.0, 0.0], longWrites = 0
    private var readCosts = [0.0, 0.0]

    struct Ring {
        let control: UnsafeMutableRawPointer, data: UnsafeMutableRawPointer, size: Int
        var tail: UnsafeMutablePointer<UInt64> { control.assumingMemoryBound(to: UInt64.self) }
        var head: UnsafeMutablePointer<UInt64> { (control + 128).assumingMemoryBound(to: UInt64.self) }
        var consumerSleeping: UnsafeMutablePointer<UInt32> { (control + 256).assumingMemoryBound(to: UInt32.self) }
        var producerSleeping: UnsafeMutablePointer<UInt32> { (control + 384).assumingMemoryBound(to: UInt32.self) }
        var latestWriteStreamed: UnsafeMutablePointer<UInt32> { (control + 512).assumingMemoryBound(to: UInt32.self) }
        /// [0]: reading bytes stored cached, [1]: stored non-temporal.
        var readCosts: UnsafeMutablePointer<UInt64> { (control + 640).assumingMemoryBound(to: UInt64.self) }
    }

    /// What one lane maps (and, mapped populated, keeps resident) in each of its two processes.
    public static func segmentBytes(ringBytes: Int) -> Int { headerBytes + 2 * ringBytes }

    private init(base: UnsafeMutableRawPointer, ringBytes: Int, creator: Bool) {
        self.base = base; self.ringBytes = ringBytes; mappedBytes = Self.segmentBytes(ringBytes: ringBytes)
        let rings = [Ring(control: base + 1024, data: base + Self.headerBytes, size: ringBytes),
                     Ring(control: base + 2048, data: base + Self.headerBytes + ringBytes, size: ringBytes)]
        outgoing = rings[creator ? 0 : 1]; incoming = rings[creator ? 1 : 0]
    }

    deinit { munmap(base, mappedBytes) }

    /// Creates a segment under a fresh random name (the name goes to the peer, which opens it; the
    /// creator unlinks it once the peer answered).
    public static func create(ringBytes: Int) throws -> (lane: SharedMemoryLane, name: String) {
        precondition(ringBytes > 0 && ringBytes % 4096 == 0, "ring of \(ringBytes) bytes")
        let (base, name) = try SharedSegment.create(bytes: segmentBytes(ringBytes: ringBytes))
        base.storeBytes(of: UInt64(ringBytes), toByteOffset: 8, as: UInt64.self)
        ddp_store_release_u64(base.assumingMemoryBound(to: UInt64.self), magic)
        return (SharedMemoryLane(base: base, ringBytes: ringBytes, creator: true), name)
    }

    /// Opens the peer's segment by name and checks its header.
    public static func open(name: String, ringBytes: Int) throws -> SharedMemoryLane {
        let bytes = segmentBytes(ringBytes: ringBytes)
        let base = try SharedSegment.open(name: name, bytes: bytes)
        guard ddp_load_acquire_u64(base.assumingMemoryBound(to: UInt64.self)) == magic,
              base.load(fromByteOffset: 8, as: UInt64.self) == UInt64(ringBytes) else {
            munmap(base, bytes)
            throw SharedSegment.Unavailable(description: "segment \(name) has another header")
        }
        return SharedMemoryLane(base: base, ringBytes: ringBytes, creator: false)
    }

    /// Copies as much of `first` then `second` as the outgoing ring has room for; returns the bytes taken.
    public func write(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) -> Int {
        let ring = outgoing
        let tail = ring.tail.pointee // only this side writes it
        let room = ring.size - Int(tail &- ddp_load_acquire_u64(ring.head))
        let wanted = min(first.count + second.count, room)
        let streaming = usesStreamingStores(forBytes: wanted)
        let timed = stores == .adaptive && wanted >= Self.measuredWriteBytes
        if timed { ddp_store_seq_cst_u32(ring.latestWriteStreamed, streaming ? 1 : 0) }
        let start = timed ? Deadline.now() : 0
        var taken = 0
        func take(_ piece: UnsafeRawBufferPointer) {
            let n = min(piece.count, room - taken)
            guard n > 0 else { return }
            copy(into: ring, at: Int((tail &+ UInt64(taken)) % UInt64(ring.size)), from: piece.baseAddress!, count: n, streaming: streaming)
            taken += n
        }
        take(first)
        take(second)
        if timed {
            Self.fold(&writeCosts[streaming ? 1 : 0], seconds: Deadline.now() - start, bytes: taken)
        }
        if taken > 0 { ddp_store_seq_cst_u64(ring.tail, tail &+ UInt64(taken)) }
        return taken
    }

    /// Whether a write of `bytes` uses non-temporal stores. Which is cheaper depends on where the two
    /// processes' cores are, which a VM's host may change from one second to the next: on this project's 2-vCPU
    /// machines the 2-rank 1 MiB ring ran 118-139 us cached and 204-227 us non-temporal with the cores
    /// sharing a cache, and 286-308 us cached and 143-156 us non-temporal without (a cached store to a
    /// line the reader still holds waits for the reader's copy to be dropped; non-temporal bytes come
    /// from memory, not from the writer's cache, which costs the reader where that cache was near).
    /// Under `adaptive` a long write takes the kind whose recent writes here plus reads there cost less
    /// per byte, and one in 32 takes the other, so a change of place is noticed.
    private func usesStreamingStores(forBytes bytes: Int) -> Bool {
        switch stores {
        case .cached: return false
        case .streaming: return bytes >= 4096
        case .adaptive:
            guard bytes >= Self.measuredWriteBytes else { return false }
            longWrites += 1
            let peer = peerReadCosts
            if writeCosts[0] == 0 || peer.cached == 0 { return false }
            if writeCosts[1] == 0 || peer.streaming == 0 { return true }
            let cheaper = writeCosts[1] + peer.streaming < writeCosts[0] + peer.cached
            return longWrites % 32 == 0 ? !cheaper : cheaper
        }
    }

    /// The peer's published costs of reading what this side wrote.
    private var peerReadCosts: (cached: Double, streaming: Double) {
        (Double(bitPattern: ddp_load_acquire_u64(outgoing.readCosts)), Double(bitPattern: ddp_load_acquire_u64(outgoing.readCosts + 1)))
    }

    /// Folds one timed copy into a running cost (a quarter weight per copy, so a few copies after a change
    /// of place outweigh the past; a copy slowed by preemption counts at most 4x the mean).
    static func fold(_ mean: inout Double, seconds: Double, bytes: Int) {
        guard bytes > 0 else { return }
        let cost = seconds * 1e9 / Double(bytes)
        mean = mean == 0 ? cost : 0.75 * mean + 0.25 * min(cost, 4 * mean)
    }

    /// What the adaptive choice has measured so far, ns per byte (0: not yet): this side's writes and the
    /// peer's reads of them, each with cached and with non-temporal stores. For tests and diagnostics.
    public var measuredCosts: (write: (cached: Double, streaming: Double), peerRead: (cached: Double, streaming: Double)) {
        ((writeCosts[0], writeCosts[1]), peerReadCosts)
    }

    /// Copies up to `count` bytes out of the incoming ring; returns how many.
    public func read(into p: UnsafeMutableRawPointer, count: Int) -> Int {
        let ring = incoming
        let head = ring.head.pointee // only this side writes it
        let n = min(count, Int(ddp_load_acquire_u64(ring.tail) &- head))
        guard n > 0 else { return 0 }
        // A long read is timed for the writer's choice of stores (usesStreamingStores), under the kind
        // of the writer's latest long write (a read spanning two writes of different kinds is rare).
        let timed = stores == .adaptive && n >= Self.measuredWriteBytes
        let kind = timed ? Int(ddp_load_seq_cst_u32(ring.latestWriteStreamed) & 1) : 0
        let started = timed ? Deadline.now() : 0
        let start = Int(head % UInt64(ring.size)), first = min(n, ring.size - start)
        p.copyMemory(from: ring.data + start, byteCount: first)
        if n > first { (p + first).copyMemory(from: ring.data, byteCount: n - first) }
        if timed {
            Self.fold(&readCosts[kind], seconds: Deadline.now() - started, bytes: n)
            ddp_store_release_u64(ring.readCosts + kind, readCosts[kind].bitPattern)
        }
        ddp_store_seq_cst_u64(ring.head, head &+ UInt64(n))
        return n
    }

    private func copy(into ring: Ring, at start: Int, from p: UnsafeRawPointer, count: Int, streaming: Bool) {
        let first = min(count, ring.size - start)
        SharedSegment.copy(ring.data + start, from: p, bytes: first, streaming: streaming)
        if count > first { SharedSegment.copy(ring.data, from: p + first, bytes: count - first, streaming: streaming) }
    }

    /// After writing: whether the peer sleeps waiting for these bytes (and must be woken; the flag is
    /// cleared, so one doorbell per sleep). seq_cst against `prepareToSleep`'s flag-then-check, so
    /// either the sleeper sees the bytes or the writer sees the flag.
    public func peerAwaitsData() -> Bool {
        ddp_load_seq_cst_u32(outgoing.consumerSleeping) != 0 && ddp_exchange_seq_cst_u32(outgoing.consumerSleeping, 0) != 0
    }

    /// After reading: whether the peer sleeps waiting for room.
    public func peerAwaitsRoom() -> Bool {
        ddp_load_seq_cst_u32(incoming.producerSleeping) != 0 && ddp_exchange_seq_cst_u32(incoming.producerSleeping, 0) != 0
    }

    /// Announces that this side will sleep until bytes arrive (`receiving`) or room frees up (`sending`);
    /// false when that already happened (then nothing is announced and the caller must not sleep).
    public func prepareToSleep(sending: Bool, receiving: Bool) -> Bool {
        if receiving {
            ddp_store_seq_cst_u32(incoming.consumerSleeping, 1)
            if ddp_load_seq_cst_u64(incoming.tail) != incoming.head.pointee { endSleep(sending: false, receiving: true); return false }
        }
        if sending {
            ddp_store_seq_cst_u32(outgoing.producerSleeping, 1)
            if Int(outgoing.tail.pointee &- ddp_load_seq_cst_u64(outgoing.head)) < outgoing.size {
                endSleep(sending: true, receiving: receiving)
                return false
            }
        }
        return true
    }

    /// Withdraws the announcements (woken, for whatever reason). Per direction: one thread may wait to
    /// send while another waits to receive.
    public func endSleep(sending: Bool, receiving: Bool) {
        if receiving { ddp_store_seq_cst_u32(incoming.consumerSleeping, 0) }
        if sending { ddp_store_seq_cst_u32(outgoing.producerSleeping, 0) }
    }
}
