import Dispatch
import Glibc
import Parallel
import Support
import Tensors

// A pipeline step when more ranks than cores share a host, run rather than simulated. With 4 ranks on
// 2 cores a list schedule of the same actions (the planner's model until 2026-12-05) predicted pp 4 at
// 25 ms where it ran 30-35: a stage that sends wakes its send thread, which wakes the receiver, and each
// wake-up lands on cores that other stages hold, so passes stretch and cores idle in ways no scheduling
// formula here reproduced (docs/benchmarks.md, "Where an oversubscribed pipeline's step goes"). The probe
// runs the schedule's action lists on this machine's cores with the threads a rank has: a compute
// thread, whose passes are arithmetic and a pass over an L2's worth of memory (ProbeMember) as long as
// the timed shards' passes, and a send thread that the compute thread wakes through a pipe, which waits
// out the transfer asleep (a link's wire time and a blocking wake-up take no core; the copy into a
// shared-memory lane, which does, is a few microseconds at these sizes) and then wakes the receiver
// through another. `copies` pipelines run at once, as dp x tp pipelines share the host; with tensor
// parallelism the same stage of `tensorParallel` neighbouring copies is one group, whose passes stop at
// each of the layers' collectives for a ring of steps over pipes (SyncProbe's pattern, wire time
// included across hosts), so the group's members wait for each other as they do. Between its last pass
// and its update each rank then waits as Trainer.pipelineStep does (`PipelineStepEnd`): for the tied
// embedding's sum and the gradient norm on a ring of the pipeline's stages, for the gradients' allreduce
// on a ring of the data-parallel copies of its stage (each step copying on the core, or on a link its
// wire time), and under ZeRO-1 for the parameters' gather after the update. Before, the planner priced
// these flat beside the probe's step; each hand-off is a wait on shared cores, and with one per ring
// piece (as the trainer's ring makes them) pp 2 x dp 2 x ZeRO-1 on 4 ranks and 2 cores went from 29.6 to
// 31-33 ms predicted (35.6-36.4 measured; docs/benchmarks.md, "A hand-off per ring piece").

/// What each rank of a probed pipeline step does between its last pass and its update, and after it.
public struct PipelineStepEnd: Sendable, Equatable {
    /// Ring steps over the stages of one pipeline before the update (tied embedding, gradient norm).
    public var pipelineSteps = 0
    /// Ring steps over the data-parallel copies of a stage before the update (the gradients' allreduce
    /// or reduce-scatter), and after it (ZeRO-1's gather of the updated parameters).
    public var dataSteps = 0, gatherSteps = 0
    /// Each data-parallel ring step's copying on the core (shared memory) and wire time (links).
    public var dataWork = 0.0, dataTransfer = 0.0
    public init(pipelineSteps: Int = 0, dataSteps: Int = 0, gatherSteps: Int = 0, dataWork: Double = 0, dataTransfer: Double = 0) {
        self.pipelineSteps = pipelineSteps; self.dataSteps = dataSteps; self.gatherSteps = gatherSteps
        self.dataWork = dataWork; self.dataTransfer = dataTransfer
    }
}

public enum PipelineProbe {
    /// One rank of one probe pipeline.
    private final class Rank: @unchecked Sendable {
        let compute: ProbeMember
        /// The compute thread writes a destination rank here; the send thread reads it.
        let queue: (read: Int32, write: Int32)
        /// Write ends to each other rank (by rank), read ends from each (by rank); -1 where unused.
        var to: [Int32], from: [Int32]
        /// The tensor-parallel ring: written to the next member, read from the previous one.
        var ringOut: Int32 = -1, ringIn: Int32 = -1
        /// The step end's rings: over the pipeline's stages and over the stage's data-parallel copies.
        var pipelineOut: Int32 = -1, pipelineIn: Int32 = -1, dataOut: Int32 = -1, dataIn: Int32 = -1
        init(ranks: Int, queue: (Int32, Int32)) {
            compute = ProbeMember(readFD: -1, writeFD: -1, memoryBytes: SyncProbe.memoryBytes)
            self.queue = queue
            to = Array(repeating: -1, count: ranks); from = Array(repeating: -1, count: ranks)
        }
    }

    private final class StartClock: @unchecked Sendable {
        private let lock = Lock()
        private(set) var start = 0.0
        func startOnce() { lock.withLock { if start == 0 { start = monotonicSeconds() } } }
    }

    private static func put(_ fd: Int32, _ value: UInt8) {
        precondition(fd >= 0, "a probe pipe left unwired")
        var byte = value
        while write(fd, &byte, 1) < 0 && errno == EINTR {}
    }

    private static func take(_ fd: Int32) -> UInt8 {
        precondition(fd >= 0, "a probe pipe left unwired")
        var byte: UInt8 = 0
        while read(fd, &byte, 1) < 0 && errno == EINTR {}
        return byte
    }

    /// Dependent multiply-adds that, with one pass over a member's memory, last `seconds` on a core alone.
    static func workCount(_ seconds: Double) -> Int {
        seconds <= 0 ? 0 : max(0, Int((seconds - SyncProbe.passSeconds) * SyncProbe.workRate))
    }

    /// Seconds per step of `copies` pipelines running `schedule` (which must have passed
    /// PipelineSimulator.run) at `costs`, on this machine's cores: the mean of `iterations` steps after
    /// one unmeasured. With `tensorParallel` > 1 (dividing `copies`) each compute action stops
    /// `collectives(action)` times, evenly spread, for `ringSteps` ring steps of its group, each
    /// `ringTransfer` seconds on a link (0: shared memory). Each rank's update waits for `stepEnd`. 0 when
    /// pipes cannot be made.
    public static func stepTime(_ schedule: PipelineSchedule, costs: PipelineCosts, copies: Int, tensorParallel: Int = 1,
                                collectives: (PipelineAction) -> Int = { _ in 0 }, ringSteps: Int = 0, ringTransfer: Double = 0,
                                stepEnd: PipelineStepEnd = PipelineStepEnd(), iterations: Int = 6) -> Double {
        let p = schedule.pipelineParallel, stop = UInt8(255), tp = max(tensorParallel, 1)
        guard copies % tp == 0 else { return 0 }
        var fds: [Int32] = []
        defer { fds.forEach { close($0) } }
        func makePipe() -> (Int32, Int32)? {
            var ends: [Int32] = [0, 0]
            guard pipe(&ends) == 0 else { return nil }
            fds += ends
            return (ends[0], ends[1])
        }
        var pipelines: [[Rank]] = []
        for _ in 0..<max(copies, 1) {
            var ranks: [Rank] = []
            for _ in 0..<p {
                guard let queue = makePipe() else { return 0 }
                ranks.append(Rank(ranks: p, queue: queue))
            }
            for r in 0..<p {
                for a in schedule.actions[r] where a.kind.isSend {
                    let peer = schedule.rank(ofStage: PipelineSimulator.partner(of: a).stage)
                    if ranks[r].to[peer] >= 0 { continue }
                    guard let channel = makePipe() else { return 0 }
                    ranks[r].to[peer] = channel.1; ranks[peer].from[r] = channel.0
                }
            }
            pipelines.append(ranks)
        }
        for group in stride(from: 0, to: pipelines.count, by: tp) where tp > 1 {
            for r in 0..<p {
                for member in 0..<tp {
                    guard let ring = makePipe() else { return 0 }
                    pipelines[group + member][r].ringOut = ring.1
                    pipelines[group + (member + 1) % tp][r].ringIn = ring.0
                }
            }
        }
        for ranks in pipelines where stepEnd.pipelineSteps > 0 && p > 1 {
            for r in 0..<p {
                guard let ring = makePipe() else { return 0 }
                ranks[r].pipelineOut = ring.1; ranks[(r + 1) % p].pipelineIn = ring.0
            }
        }
        // A data-parallel group: the copies holding the same tensor-parallel shard of a stage.
        let dp = pipelines.count / tp
        for member in 0..<tp where dp > 1 && stepEnd.dataSteps + stepEnd.gatherSteps > 0 {
            for r in 0..<p {
                for d in 0..<dp {
                    guard let ring = makePipe() else { return 0 }
                    pipelines[member + d * tp][r].dataOut = ring.1
                    pipelines[member + (d + 1) % dp * tp][r].dataIn = ring.0
                }
            }
        }
        let step = workCount(costs.step), dataWork = workCount(stepEnd.dataWork)
        @Sendable func dataRing(_ rank: Rank, steps: Int) {
            guard dp > 1 else { return }
            for _ in 0..<steps {
                if dataWork > 0 { rank.compute.work(dataWork) }
                ProbeMember.ringStep(out: rank.dataOut, in: rank.dataIn, transfer: stepEnd.dataTransfer)
            }
        }
        // Per action: its collectives and the work before each of them (and after the last).
        let plans = schedule.actions.map { list in
            list.map { a -> (stops: Int, count: Int) in
                guard a.kind.isCompute && a.kind != .step else { return (0, 0) }
                let stops = tp > 1 ? collectives(a) : 0
                return (stops, workCount(costs.cost(a) / Double(stops + 1)))
            }
        }
        let done = DispatchSemaphore(value: 0)
        let clock = StartClock()
        for ranks in pipelines {
            for (r, rank) in ranks.enumerated() {
                startThread(name: "pipe-probe-send") {
                    while true {
                        let peer = take(rank.queue.read)
                        if peer == stop { break }
                        sleepSeconds(costs.transfer)
                        put(rank.to[Int(peer)], 1)
                    }
                    done.signal()
                }
                startThread(name: "pipe-probe") {
                    for iteration in 0...iterations {
                        // Timing starts when the first rank finishes the unmeasured step.
                        if iteration == 1 { clock.startOnce() }
                        for (i, a) in schedule.actions[r].enumerated() {
                            if a.kind.isSend {
                                put(rank.queue.write, UInt8(schedule.rank(ofStage: PipelineSimulator.partner(of: a).stage)))
                            } else if a.kind.isReceive {
                                _ = take(rank.from[schedule.rank(ofStage: PipelineSimulator.partner(of: a).stage)])
                            } else if a.kind == .step {
                                if p > 1 && stepEnd.pipelineSteps > 0 { ProbeMember.ringStep(out: rank.pipelineOut, in: rank.pipelineIn, transfer: 0) }
                                dataRing(rank, steps: stepEnd.dataSteps)
                                for _ in 1..<max(stepEnd.pipelineSteps, 1) where p > 1 {
                                    ProbeMember.ringStep(out: rank.pipelineOut, in: rank.pipelineIn, transfer: 0)
                                }
                                rank.compute.work(step)
                                dataRing(rank, steps: stepEnd.gatherSteps)
                            } else {
                                let plan = plans[r][i]
                                rank.compute.work(plan.count)
                                for _ in 0..<plan.stops {
                                    for _ in 0..<ringSteps { ProbeMember.ringStep(out: rank.ringOut, in: rank.ringIn, transfer: ringTransfer) }
                                    rank.compute.work(plan.count)
                                }
                            }
                        }
                    }
                    put(rank.queue.write, stop)
                    done.signal()
                }
            }
        }
        for _ in 0..<(2 * p * pipelines.count) { done.wait() }
        return (monotonicSeconds() - clock.start) / Double(iterations)
    }
}
