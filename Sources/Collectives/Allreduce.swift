import Rendezvous
import Transport

public enum AllreduceAlgorithm: String, Sendable, CaseIterable, Codable {
    case ring, tree, doubleTree = "double-tree", halvingDoubling = "halving-doubling", twoShot = "two-shot", auto
}

/// The same choice from an explicit table (pure; tests and the benchmark's report).
public func chooseAlgorithm(bytes: Int, worldSize: Int, table: TuningTable?) -> AllreduceAlgorithm {
    CollectiveOptions(tuning: table).algorithm(bytes: bytes, worldSize: worldSize)
}

/// Auto without a table for the group's size. A group with a shared arena (its ranks on one host):
/// two-shot. 4 ranks on 2 cores, 3-round medians: fastest of ours at every size from 4 KiB to 64 MiB,
/// a 4-rank data-parallel step's exposed allreduce 5.3-5.5 ms against the ring's 6.5-6.6. 2 ranks:
/// within noise of the lanes' algorithms in allreduce-bench, and cheaper beside compute: a 2-rank
/// step of the recipe spends 0.7 ms of its communication thread's CPU time against the ring's 1.1-1.3
/// (no doorbells, two meetings a piece). Otherwise halving-doubling for small messages, the ring above.
func fixedRule(bytes: Int, sharedArena: Bool) -> AllreduceAlgorithm {
    if sharedArena { return .twoShot }
    return bytes <= 64 << 10 ? .halvingDoubling : .ring
}

/// Seconds per byte of the float32 sum reduction on this core (for the cost model's reduction term).
public func measureReductionSecondsPerByte(bytes: Int = 8 << 20) -> Double {
    let count = bytes / 4
    let a = UnsafeMutableBufferPointer<Float>.allocate(capacity: count), b = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
    defer { a.deallocate(); b.deallocate() }
    a.initialize(repeating: 1); b.initialize(repeating: 0.5)
    var best = Double.infinity
    for _ in 0..<5 {
        let start = Deadline.now()
        ReduceOp.sum.combine(a.baseAddress!, b.baseAddress!, count: count)
        best = min(best, Deadline.now() - start)
    }
    return best / Double(bytes)
}

/// A collective that failed on this rank: what this rank saw, and the root cause another rank
/// reported first when this rank only saw the fallout (e.g. a neighbour that exited because of it).
public struct CollectiveError: Error, CustomStringConvertible {
    public let underlying: Error
    public let rootCause: String?
    public var description: String {
        "\(underlying)" + (rootCause.map { "; root cause: \($0)" } ?? "")
    }
}

/// Runs a collective; on failure records it in the store and attaches the root cause.
func guarded<T>(_ group: ProcessGroup, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as TransportError {
        var timedOut = false
        if case .timedOut = error.kind { timedOut = true }
        throw CollectiveError(underlying: error, rootCause: group.recordFailure("\(error)", blamed: error.peer?.rank, timedOut: timedOut))
    } catch {
        throw CollectiveError(underlying: error, rootCause: group.recordFailure("\(error)"))
    }
}

/// In-place allreduce over the group; every rank must call it with the same count, op and options.
/// bf16 on the wire always runs the ring (the algorithm that moves the most bytes).
public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp = .sum, options: CollectiveOptions,
                      group: ProcessGroup) throws {
    guard group.worldSize > 1 else { return }
    let chosen = options.algorithm(bytes: buffer.count * 4, worldSize: group.worldSize, sharedArena: group.arena != nil)
    try guarded(group) {
        if options.wire == .bfloat16 { return try compressedRingAllreduce(buffer, op: op, group: group) }
        switch chosen {
        case .ring, .auto: try ringAllreduce(buffer, op: op, group: group)
        case .tree: try treeAllreduce(buffer, op: op, group: group)
        case .doubleTree: try doubleTreeAllreduce(buffer, op: op, group: group)
        case .halvingDoubling: try halvingDoublingAllreduce(buffer, op: op, group: group)
        case .twoShot: try twoShotAllreduce(buffer, op: op, group: group, arena: group.arena!) // chosen only with one
        }
    }
}

/// The same with an explicit algorithm and wire format (auto: the fixed size rule).
public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp = .sum,
                      algorithm: AllreduceAlgorithm = .auto, wire: WireFormat = .float32, group: ProcessGroup) throws {
    try allreduce(buffer, op: op, options: CollectiveOptions(algorithm: algorithm, wire: wire), group: group)
}

/// Dissemination barrier: in round k rank r signals r + 2^k and waits for r - 2^k; after ceil(log2 N)
/// rounds every rank has (transitively) heard from every other.
public func barrier(group: ProcessGroup) throws {
    try guarded(group) { try disseminationBarrier(group: group) }
}

func disseminationBarrier(group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let tag = group.nextTag()
    var token: UInt32 = 0x0BA2_2137, received: UInt32 = 0
    var distance = 1
    while distance < n {
        let to = (rank + distance) % n, from = (rank - distance + n) % n
        try withUnsafeBytes(of: &token) { send in
            try withUnsafeMutableBytes(of: &received) { receive in
                try exchange(group, tag: tag, sendTo: to, sendBytes: send, receiveFrom: from, receiveBuffer: receive,
                             operation: "barrier on \(group.name) (round with ranks \(to) and \(from))")
            }
        }
        distance *= 2
    }
}

/// Broadcast from `root` to every rank, in place.
public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int, group: ProcessGroup) throws {
    try broadcast(bytes: UnsafeMutableRawBufferPointer(buffer), root: root, group: group)
}

/// Broadcast of raw bytes from `root`, in place (any element type travels as itself).
public func broadcast(bytes: UnsafeMutableRawBufferPointer, root: Int, group: ProcessGroup) throws {
    try guarded(group) { try treeBroadcast(bytes, root: root, group: group) }
}

/// Broadcast of integers from `root`: every rank returns root's values (same count on every rank).
public func broadcast(_ values: [Int64], root: Int, group: ProcessGroup) throws -> [Int64] {
    var copy = values
    try copy.withUnsafeMutableBytes { try broadcast(bytes: $0, root: root, group: group) }
    return copy
}

/// Allgather in place: on entry segment r (segmentRange(count, worldSize, r)) holds rank r's part.
public func allgather(_ buffer: UnsafeMutableBufferPointer<Float>, group: ProcessGroup) throws {
    try guarded(group) {
        if let arena = sharedArena(of: group) { try arenaAllgather(buffer, group: group, arena: arena) } else { try ringAllgather(buffer, group: group) }
    }
}

/// The arena a reduce-scatter or an allgather runs through: the group's, as auto's fixed rule takes
/// two-shot for an allreduce (ZeRO-1 on 2 ranks of the recipe: the communication thread's CPU time per
/// step halved, exposed 1.2-1.4 ms against the ring's 1.6-2.1).
func sharedArena(of group: ProcessGroup) -> SharedArena? {
    guard let arena = group.arena, arena.slotBytes / 4 >= group.worldSize else { return nil }
    return arena
}

/// Allgather of integers: every rank gives the same number of values and gets everyone's, in rank order.
public func allgather(_ values: [Int64], group: ProcessGroup) throws -> [[Int64]] {
    let n = group.worldSize, k = values.count
    var all = [Int64](repeating: 0, count: n * k)
    for i in 0..<k { all[group.rank * k + i] = values[i] }
    try all.withUnsafeMutableBytes { raw in
        try guarded(group) { try ringAllgather(raw, elementBytes: 8 * max(k, 1), group: group) }
    }
    return (0..<n).map { Array(all[($0 * k)..<(($0 + 1) * k)]) }
}

/// Reduce-scatter in place: on exit segment `group.rank` holds the reduction of that segment.
public func reduceScatter(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp = .sum, wire: WireFormat = .float32,
                          group: ProcessGroup) throws {
    try guarded(group) {
        switch wire {
        case .float32:
            if let arena = sharedArena(of: group) { try arenaReduceScatter(buffer, op: op, group: group, arena: arena) }
            else { try ringReduceScatter(buffer, op: op, group: group) }
        case .bfloat16: try compressedRingReduceScatter(buffer, op: op, group: group)
        }
    }
}
