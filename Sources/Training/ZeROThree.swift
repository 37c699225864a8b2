import Collectives
import CShims
import FoundationEssentials
import Glibc
import NN
import Tensors
import Transport

// ZeRO stage 3 (FSDP's fully_shard): each rank keeps only its piece of every parameter unit (segment r
// of the unit's range, as for the gradient buckets), so values, gradients and optimizer state all cost
// 1/N. The model announces each unit before and after it computes (ParameterUnitHooks); a unit is
// all-gathered into the (paged) parameter buffer before use, its others' pieces zeroed and their pages
// handed back after use. Gathers run on the communication thread in the same FIFO as the gradient
// reduce-scatters, so every rank issues the collectives in the same order; while unit u computes, unit
// u ± 1 (the pass's next) is gathered ahead, at most `prefetchDepth` units beyond the one in use and the
// roots. Units the step uses at both ends (the tied embedding/head, the last layer) stay gathered from
// forward to backward, as FSDP keeps its root module, and so does the last block forward runs (backward
// starts with it); with reshard_after_forward off every unit does.

extension DataParallel: ParameterUnitHooks {
    public func willUse(unit u: Int, backward: Bool) throws {
        condition.lock()
        defer { condition.unlock() }
        guard pins == 0 else { return }
        if unitState[u] == .released { request(u) }
        if unitState[u] == .requested {
            let start = Deadline.now()
            while unitState[u] == .requested && failure == nil { condition.wait() }
            gatherWaitSeconds += Deadline.now() - start
        }
        if let failure { throw failure }
        var next = backward ? u - 1 : u + 1
        while backward && next >= 0 && !backwardUnits.contains(next) { next -= 1 }
        if units.indices.contains(next), unitState[next] == .released,
           unitState.indices.filter({ unitState[$0] != .released && !rootUnits.contains($0) && $0 != u }).count < prefetchDepth {
            request(next)
        }
        peakGatheredUnits = max(peakGatheredUnits, unitState.filter { $0 != .released }.count)
    }

    public func doneUsing(unit u: Int, backward: Bool) {
        condition.lock()
        defer { condition.unlock() }
        guard pins == 0 else { return }
        // The last unit forward runs is the first backward needs (after the roots): releasing it only to
        // gather it again at once would cost a gather, so it stays, as FSDP2 keeps the last layer.
        if backward || (reshardAfterForward && !rootUnits.contains(u) && u != firstBackwardUnit) { release(u) }
    }

    /// Floats in each unit.
    public var unitSizes: [Int] { units.map { $0.reduce(0) { $0 + $1.count } } }

    /// The unit backward reads first after the roots: the last non-root unit it uses.
    var firstBackwardUnit: Int? { units.indices.filter { !rootUnits.contains($0) && backwardUnits.contains($0) }.max() }

    /// Caller holds the lock.
    func request(_ u: Int) {
        unitState[u] = .requested
        gathersPerStep += 1
        queue.append(.gather(u))
        condition.broadcast()
    }

    /// Caller holds the lock; the unit is gathered and not in use.
    func release(_ u: Int) {
        guard unitState[u] == .gathered else { return }
        unitState[u] = .released
        for range in units[u] { releaseOthersPieces(of: range, in: parameters.values) }
    }

    /// Every unit whole on every rank until `unpinParameters` (evaluation, checkpoints, the replica
    /// check). Collective: every rank calls it at the same point. Nests.
    public func pinParameters() throws {
        guard shardParameters else { return }
        condition.lock()
        defer { condition.unlock() }
        pins += 1
        guard pins == 1 else { return }
        for u in units.indices where unitState[u] == .released { request(u) }
        while unitState.contains(where: { $0 != .gathered }) && failure == nil { condition.wait() }
        if let failure { throw failure }
    }

    /// Back to this rank's pieces only.
    public func unpinParameters() {
        guard shardParameters else { return }
        condition.lock()
        defer { condition.unlock() }
        pins -= 1
        guard pins == 0 else { return }
        for u in units.indices { release(u) }
    }

    /// After the start's broadcast (every rank holds the whole model): keep only this rank's pieces.
    public func shardParametersNow() {
        guard shardParameters else { return }
        condition.lock()
        defer { condition.unlock() }
        for u in units.indices { release(u) }
    }

    /// Draws the model unit by unit, keeping only this rank's pieces of each as soon as it is complete
    /// (every rank draws the same values from the same seed, so nothing is sent). Returns CRC-32Cs of
    /// the model as drawn, for the ranks to compare: of the tensors the data-parallel group holds alike,
    /// and of the experts, which under expert parallelism only the expert-data-parallel group does.
    public func initializeSharded(_ model: ParameterUnits, seed: UInt64) -> (replicated: UInt32, experts: UInt32) {
        var next = 0
        var crc: (replicated: UInt32, experts: UInt32) = (0, 0)
        model.initialize(seed: seed) { offset in
            while next < units.count && units[next].allSatisfy({ $0.upperBound <= offset }) {
                for range in units[next] {
                    let sum = ddp_crc32c(isExpertBucket(range) ? crc.experts : crc.replicated, parameters.values.base + range.lowerBound, range.count * 4)
                    if isExpertBucket(range) { crc.experts = sum } else { crc.replicated = sum }
                }
                condition.lock()
                unitState[next] = .gathered
                release(next)
                condition.unlock()
                next += 1
            }
        }
        return crc
    }

    /// Exposed gather wait since the last call, and the gathers issued.
    public func takeGatherCounters() -> (seconds: Double, gathers: Int) {
        condition.lock()
        defer { condition.unlock() }
        let out = (gatherWaitSeconds, gathersPerStep)
        gatherWaitSeconds = 0
        gathersPerStep = 0
        return out
    }
}
