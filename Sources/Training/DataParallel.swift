import Collectives
import CShims
import FoundationEssentials
import Glibc
import Support
import NN
import Rendezvous
import Tensors
import Transport

/// DDP semantics over our collectives. Gradients live in one flat buffer in forward (registration)
/// order, so backward finishes them from the end of the buffer towards the start. Buckets are fixed
/// `bucketBytes` slices counted from the end; as soon as backward reports that a bucket's gradients are
/// final, the bucket is handed to a persistent communication thread that averages it across ranks while
/// backward goes on. The optimizer waits only for the buckets still in flight (the "exposed"
/// communication time). Every rank cuts the same buckets in the same order, so collectives match up.
///
/// ZeRO stage 1 (`shardOptimizer`): each bucket is reduce-scattered instead of allreduced, so rank r
/// ends up with the averaged gradient of segment r of every bucket; it owns those pieces, keeps
/// optimizer state only for them, updates them, and an allgather per bucket brings every rank the
/// updated parameters (copies, so replicas stay bitwise identical).
///
/// ZeRO stage 2 (`shardGradients`): as stage 1, and once a bucket is reduce-scattered the rest of it
/// (the other ranks' segments) is zeroed and its whole pages go back to the kernel (the gradient
/// buffer is paged), so between steps a rank holds only its own pieces of the gradient; the full
/// buffer is resident only while backward fills the buckets not yet sent.
///
/// Expert parallelism (`experts`): the expert tensors at the start of the buffer differ between the
/// ranks of an expert group, so their buckets are averaged over the expert-data-parallel group (the
/// ranks holding the same experts) instead, after a division by the expert-parallel size: each rank's
/// expert gradient already sums the tokens of that many data-parallel ranks (DeepSpeed-MoE's scaling).
/// ZeRO shards them over that group too: a rank owns a segment of each expert bucket among the ranks
/// holding its experts, and ZeRO-3 gathers a block's experts from them.
public final class DataParallel: @unchecked Sendable {
    public let group: ProcessGroup
    let parameters: ParameterSet
    let bucketElements: Int
    /// Algorithm, wire format and tuning table of the gradient allreduces (set before the first step).
    private(set) var options: CollectiveOptions
    public let shardOptimizer: Bool
    public let shardGradients: Bool
    /// ZeRO-3: parameters sharded too, by unit (ZeROThree.swift).
    public let shardParameters: Bool
    /// ZeRO-3's units (forward order, each one or more ranges), those kept gathered from forward to
    /// backward, and the rest of its state; all guarded by `condition`.
    let units: [[Range<Int>]]
    let rootUnits: Set<Int>
    /// Units whose values backward reads (prefetch in backward skips the others).
    let backwardUnits: Set<Int>
    let reshardAfterForward: Bool
    /// Gathered units besides the roots and the one in use: how far prefetch runs ahead.
    let prefetchDepth: Int
    var unitState: [UnitState] = []
    var pins = 0
    /// Seconds the compute thread waited for a gather (exposed communication); compute thread only.
    var gatherWaitSeconds = 0.0
    var gathersPerStep = 0
    /// Most units gathered at once (ZeRO-3), for the memory bound.
    public internal(set) var peakGatheredUnits = 0
    enum UnitState { case released, requested, gathered }
    enum Job { case reduce(Range<Int>), gather(Int) }
    /// Bucket ranges in the order they are communicated (from the end of the buffer).
    public let buckets: [Range<Int>]
    let condition = Condition()
    var queue: [Job] = []
    var inFlight = 0
    var failure: Error?
    var stopping = false
    /// Buckets before this index (in communication order) are queued this step.
    var nextBucket = 0
    public private(set) var bucketsPerStep = 0
    /// Expert parallelism: the expert tensors' range, the group averaging them and the expert-parallel size.
    public let experts: ExpertGradients?
    public struct ExpertGradients {
        public let range: Range<Int>
        public let group: ProcessGroup
        public let expertParallel: Int
        public init(range: Range<Int>, group: ProcessGroup, expertParallel: Int) {
            self.range = range; self.group = group; self.expertParallel = expertParallel
        }
    }

    /// `units` (ZeRO-3) shards the parameters too: its units become the buckets, each gathered before
    /// use and released after (`reshardAfterForward`: also between forward and backward), with
    /// `prefetchDepth` units gathered ahead on the communication thread. `readyOffsets` are where
    /// backward reports gradients final (Model.gradientReadyOffsets): buckets are cut there.
    public init(group: ProcessGroup, parameters: ParameterSet, bucketBytes: Int, options: CollectiveOptions,
                shardOptimizer: Bool = false, shardGradients: Bool = false, units: ParameterUnits? = nil,
                reshardAfterForward: Bool = true, prefetchDepth: Int = 1, experts: ExpertGradients? = nil,
                readyOffsets: [Int] = [0]) {
        precondition(!shardGradients || shardOptimizer, "ZeRO-2 shards the optimizer state too")
        precondition(units == nil || shardGradients, "ZeRO-3 shards gradients and optimizer state too")
        precondition(experts == nil || experts!.range.lowerBound == 0, "expert parallelism with the experts first")
        self.experts = experts
        self.group = group
        self.parameters = parameters
        bucketElements = max(1, bucketBytes / 4)
        self.options = options
        self.shardOptimizer = shardOptimizer
        self.shardGradients = shardGradients
        shardParameters = units != nil
        self.units = units?.parameterUnits ?? []
        rootUnits = units?.rootUnits ?? []
        backwardUnits = units.map { u in Set(u.parameterUnits.indices.filter { u.backwardUses(unit: $0) }) } ?? []
        self.reshardAfterForward = reshardAfterForward
        // Expert parallelism's all-to-alls run on the compute thread over connections the gathers'
        // groups may share, and a connection serves one call at a time: a unit is gathered only while
        // the compute thread waits for it.
        self.prefetchDepth = experts == nil ? max(0, prefetchDepth) : 0
        // ZeRO-3 reduce-scatters each unit's gradient as one bucket once backward is through it.
        buckets = Self.buckets(count: parameters.count, bucketElements: bucketElements, units: units?.parameterUnits,
                               expertEnd: experts?.range.upperBound ?? 0, readyOffsets: readyOffsets)
        unitState = Array(repeating: .gathered, count: self.units.count)
        startThread(name: "ddp-communication") { [self] in communicationLoop() }
    }

    deinit { stop() }

    /// Installs the tuning table auto consults (under the lock the communication thread takes).
    public func setTuning(_ table: TuningTable?) {
        condition.lock(); options.tuning = table; condition.unlock()
    }

    public func stop() {
        condition.lock(); stopping = true; condition.broadcast(); condition.unlock()
    }

    /// Called before backward of the step's last micro-batch.
    public func beginStep() {
        condition.lock(); nextBucket = 0; bucketsPerStep = 0; condition.unlock()
    }

    /// Backward's hook: gradients from `offset` to the end are final; queue every bucket inside that.
    public func gradientsReady(from offset: Int) {
        condition.lock()
        while nextBucket < buckets.count && buckets[nextBucket].lowerBound >= offset {
            enqueue(buckets[nextBucket])
            nextBucket += 1
        }
        condition.unlock()
    }

    /// Queues what is left and waits for all buckets; returns the seconds spent waiting.
    public func finishStep() throws -> Double {
        let start = Deadline.now()
        condition.lock()
        defer { condition.unlock() }
        while nextBucket < buckets.count { enqueue(buckets[nextBucket]); nextBucket += 1 }
        while (inFlight > 0 || !queue.isEmpty) && failure == nil { condition.wait() }
        if let failure { throw failure }
        // ZeRO-3: the update is about to change every piece, so nothing gathered stays valid.
        if shardParameters && pins == 0 { for u in units.indices { release(u) } }
        return Deadline.now() - start
    }

    /// Caller holds the lock.
    private func enqueue(_ range: Range<Int>) {
        queue.append(.reduce(range))
        bucketsPerStep += 1
        condition.broadcast()
    }

    private func communicationLoop() {
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            if stopping { condition.unlock(); return }
            let job = queue.removeFirst()
            inFlight += 1
            condition.unlock()
            var error: Error?
            do {
                switch job {
                case .reduce(let bucket):
                    let slice = UnsafeMutableBufferPointer(rebasing: parameters.gradients.buffer[bucket])
                    let group = self.group(of: bucket)
                    if let experts, isExpertBucket(bucket) {
                        scale(slice.baseAddress!, by: 1 / Float(experts.expertParallel), count: slice.count)
                    }
                    if group.worldSize == 1 { break }
                    if shardOptimizer {
                        try reduceScatter(slice, op: .average, wire: options.wire, group: group)
                        if shardGradients { releaseOthersPieces(of: bucket, in: parameters.gradients) }
                    } else {
                        try allreduce(slice, op: .average, options: options, group: group)
                    }
                case .gather(let unit):
                    for range in units[unit] {
                        try allgather(UnsafeMutableBufferPointer(rebasing: parameters.values.buffer[range]), group: group(of: range))
                    }
                }
            } catch let e {
                error = e
            }
            condition.lock()
            inFlight -= 1
            if case .gather(let unit) = job, error == nil { unitState[unit] = .gathered }
            if let error, failure == nil { failure = error; queue.removeAll() }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Expert parallelism: whether `bucket` holds expert tensors.
    func isExpertBucket(_ bucket: Range<Int>) -> Bool { experts.map { bucket.upperBound <= $0.range.upperBound } ?? false }

    /// The group that averages `bucket`: the data-parallel group, or the expert-data-parallel group.
    func group(of bucket: Range<Int>) -> ProcessGroup {
        if let experts, isExpertBucket(bucket) { return experts.group }
        return group
    }

    // MARK: ZeRO-1

    /// The pieces of the parameter buffer data-parallel rank `rank` owns: all of it without sharding.
    public func ownedRanges(of rank: Int) -> [Range<Int>] {
        guard shardOptimizer else { return [0..<parameters.count] }
        return Self.ownedRanges(buckets: buckets, rank: rank, groupSize: group.worldSize, expertEnd: experts?.range.upperBound ?? 0,
                                expertParallel: experts?.expertParallel ?? 1)
    }

    /// The buckets of a `count`-float buffer in communication order: ZeRO-3's units' ranges (from the
    /// end of the buffer, so a block's experts go with the other experts, after backward), or
    /// slices cut where backward reports gradients final (readyBuckets), the expert tensors [0,
    /// expertEnd) cut separately in fixed slices (they are averaged over another group). A pure
    /// function: the planner counts with it too.
    public static func buckets(count: Int, bucketElements: Int, units: [[Range<Int>]]?, expertEnd: Int,
                               readyOffsets: [Int] = [0]) -> [Range<Int>] {
        if let units { return units.joined().sorted { $0.lowerBound > $1.lowerBound } }
        let dense = readyBuckets(expertEnd..<count, bucketElements: bucketElements, readyOffsets: readyOffsets)
        return expertEnd > 0 ? dense + bucketRanges(count: expertEnd, bucketElements: bucketElements) : dense
    }

    /// Buckets of `range` (from its end down) cut where backward reports gradients final: the range is
    /// cut at every reported offset inside it into pieces, in the order backward finishes them; a piece
    /// under an eighth of a bucket joins the piece finished after it (the last one, the piece before
    /// it); then pieces are merged in that order while a bucket stays within `bucketElements`, except
    /// the last piece, which is sent alone, so the step waits only for what backward finished last; a
    /// piece larger than a bucket is sliced from its end (bucketRanges). Only the whole range reported
    /// ([0]) gives bucketRanges' fixed slices. The recipe's fixed slices left 1.07 MB (a 1 MiB slice and
    /// the remainder) waiting for block 0's attention; here it is that attention and the embeddings
    /// (321 KiB).
    public static func readyBuckets(_ range: Range<Int>, bucketElements: Int, readyOffsets: [Int]) -> [Range<Int>] {
        let cuts = Set(readyOffsets.filter { $0 > range.lowerBound && $0 < range.upperBound }).sorted(by: >)
        let points = [range.upperBound] + cuts + [range.lowerBound]
        var pieces: [Range<Int>] = []
        var waiting: Range<Int>? // a small piece, joined to the next
        for i in 0..<(points.count - 1) where points[i + 1] < points[i] {
            var piece = points[i + 1]..<points[i]
            if let small = waiting { piece = piece.lowerBound..<small.upperBound; waiting = nil }
            if piece.count < bucketElements / 8 { waiting = piece } else { pieces.append(piece) }
        }
        if let small = waiting { pieces.append(small.lowerBound..<(pieces.popLast()?.upperBound ?? small.upperBound)) }
        var merged: [Range<Int>] = []
        for (i, piece) in pieces.enumerated() {
            if i < pieces.count - 1, let last = merged.last, last.count + piece.count <= bucketElements {
                merged[merged.count - 1] = piece.lowerBound..<last.upperBound
            } else {
                merged.append(piece)
            }
        }
        return merged.flatMap { piece in
            bucketRanges(count: piece.count, bucketElements: bucketElements).map { ($0.lowerBound + piece.lowerBound)..<($0.upperBound + piece.lowerBound) }
        }
    }

    /// ZeRO's pieces of data-parallel rank `rank` in a group of `groupSize`: segment `rank` of every
    /// bucket; expert buckets (below `expertEnd`) are split over the expert-data-parallel group
    /// (groupSize / expertParallel ranks, this rank's index there rank / expertParallel).
    public static func ownedRanges(buckets: [Range<Int>], rank: Int, groupSize: Int, expertEnd: Int, expertParallel: Int) -> [Range<Int>] {
        buckets.map { bucket in
            let expert = bucket.upperBound <= expertEnd
            let piece = segmentRange(count: bucket.count, parts: expert ? groupSize / expertParallel : groupSize,
                                     index: expert ? rank / expertParallel : rank)
            return (bucket.lowerBound + piece.lowerBound)..<(bucket.lowerBound + piece.upperBound)
        }
    }

    /// ZeRO-2/3: `buffer`'s values in `bucket` outside this rank's piece (in the group that shards it)
    /// are not needed any more.
    func releaseOthersPieces(of bucket: Range<Int>, in buffer: FloatBuffer) {
        let sharding = group(of: bucket)
        let piece = segmentRange(count: bucket.count, parts: sharding.worldSize, index: sharding.rank)
        buffer.zero(bucket.lowerBound..<(bucket.lowerBound + piece.lowerBound))
        buffer.zero((bucket.lowerBound + piece.upperBound)..<bucket.upperBound)
    }

    /// Zeroes the gradients before a step. ZeRO-2 hands the pages of other ranks' pieces back too (they
    /// read as zero), so the buffer costs memory only where backward writes before its bucket is sent.
    /// This rank's pieces are cleared in place: the update reads them every step, and a page handed back
    /// costs two faults when backward's accumulation reads, then writes it (the recipe, 2 ranks, 100
    /// steps: 343k minor faults when every page went back, 186k now, ZeRO-1 31k).
    public func zeroGradients() {
        guard shardGradients else { return parameters.zeroGradients() }
        let gradients = parameters.gradients
        var next = 0
        for piece in ownedRanges(of: group.rank).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            gradients.zero(next..<piece.lowerBound)
            gradients.zero(piece, releasing: false)
            next = piece.upperBound
        }
        gradients.zero(next..<parameters.count)
    }

    /// After the owners updated their pieces: every rank gets every piece (float32: parameters are exact).
    public func gatherParameters() throws {
        guard shardOptimizer && !shardParameters else { return }
        try gatherPieces(parameters.values.buffer)
    }

    /// Segment r of each bucket of `full` comes from rank r.
    func gatherPieces(_ full: UnsafeMutableBufferPointer<Float>) throws {
        for bucket in buckets { try allgather(UnsafeMutableBufferPointer(rebasing: full[bucket]), group: group(of: bucket)) }
    }

    /// Rank 0's parameters to every replica (the expert tensors from the expert-data-parallel group's
    /// rank 0, which holds the same experts).
    public func broadcastParameters() throws {
        let values = parameters.values.buffer
        guard let experts else { return try broadcast(values, root: 0, group: group) }
        try broadcast(UnsafeMutableBufferPointer(rebasing: values[experts.range.upperBound...]), root: 0, group: group)
        if experts.group.worldSize > 1 { try broadcast(UnsafeMutableBufferPointer(rebasing: values[experts.range]), root: 0, group: experts.group) }
    }

    /// A full-length copy of a state buffer packed over `ownedRanges(of: rank)` (collective: every rank calls it).
    public func gatherState(_ packed: FloatBuffer) throws -> FloatBuffer {
        let full = FloatBuffer(count: parameters.count)
        unpack(packed, into: full, ranges: ownedRanges(of: group.rank))
        if shardOptimizer { try gatherPieces(full.buffer) }
        return full
    }

    /// Sums over ranks, on the caller's thread; call only between steps.
    public func sum(_ values: [Double]) throws -> [Double] {
        var buffer = values.map { Float($0) }
        try buffer.withUnsafeMutableBufferPointer { try allreduce($0, op: .sum, algorithm: .halvingDoubling, group: group) }
        return buffer.map { Double($0) }
    }

    /// Means over ranks (for logging), on the caller's thread; call only between steps.
    public func average(_ values: [Double]) throws -> [Double] {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(values.count, 1))
        defer { buffer.deallocate() }
        for (i, v) in values.enumerated() { buffer[i] = Float(v) }
        try allreduce(UnsafeMutableBufferPointer(rebasing: buffer[0..<values.count]), op: .average, algorithm: .halvingDoubling, group: group)
        return values.indices.map { Double(buffer[$0]) }
    }

    /// Fails unless every rank holds bitwise-identical parameters (CRC-32C allgathered).
    public func verifyReplicas(iteration: Int) throws {
        let values = parameters.values.buffer
        guard let experts else {
            if let r = try firstRankDiffering(checksum(of: values), group: group) {
                throw TrainingError("after iteration \(iteration) rank \(r)'s parameters differ bitwise from rank 0's")
            }
            return
        }
        if let r = try firstRankDiffering(checksum(of: UnsafeMutableBufferPointer(rebasing: values[experts.range.upperBound...])), group: group) {
            throw TrainingError("after iteration \(iteration) data-parallel rank \(r)'s dense parameters differ bitwise from rank 0's")
        }
        if let r = try firstRankDiffering(checksum(of: UnsafeMutableBufferPointer(rebasing: values[experts.range])), group: experts.group) {
            throw TrainingError("after iteration \(iteration) expert-data-parallel rank \(r) (world rank \(experts.group.members[r]))'s experts differ bitwise from its group's rank 0")
        }
    }
}

/// Checks that every rank of `group` runs the same model and config: a CRC-32C of `text` is
/// allgathered, and a rank that differs is named.
func requireSameConfig(_ text: String, group: ProcessGroup) throws {
    var bytes = Array(text.utf8)
    let hash = bytes.withUnsafeMutableBytes { ddp_crc32c(0, $0.baseAddress!, $0.count) }
    if let r = try firstRankDiffering(hash, group: group) {
        throw TrainingError("rank \(r) runs a different model or config than rank 0 (hash mismatch); start every rank with the same config and flags")
    }
}

/// Fixed `bucketElements` slices counted from the end of a `count`-element buffer (the last one
/// holds the remainder at the start), in the order backward finishes them.
public func bucketRanges(count: Int, bucketElements: Int) -> [Range<Int>] {
    var out: [Range<Int>] = []
    var end = count
    while end > 0 {
        out.append(max(0, end - bucketElements)..<end)
        end -= bucketElements
    }
    return out
}

/// full[ranges] -> packed (ranges laid end to end).
public func pack(_ full: FloatBuffer, into packed: FloatBuffer, ranges: [Range<Int>]) {
    var at = 0
    for r in ranges {
        (packed.base + at).update(from: full.base + r.lowerBound, count: r.count)
        at += r.count
    }
}

/// packed -> full[ranges]; the rest of full is left alone.
public func unpack(_ packed: FloatBuffer, into full: FloatBuffer, ranges: [Range<Int>]) {
    var at = 0
    for r in ranges {
        (full.base + r.lowerBound).update(from: packed.base + at, count: r.count)
        at += r.count
    }
}

public struct TrainingError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

