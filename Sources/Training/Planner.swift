import Collectives
import FoundationEssentials
import Glibc
import Support
import NN
import Parallel
import Rendezvous
import Transport
import Tensors

// The layout planner (`ddp-train plan`): every layout of a world size the trainer accepts, each with
// its per-rank training state counted exactly as the trainer allocates it, its activations by the
// formula the trainer prints, and a predicted step time from its model shards timed on this machine
// (ShardTiming.swift), the alpha-beta cost of each collective and the pipeline bubble. The training
// state is counted exactly (tested against the trainer's own count); scripts/bench-layouts.sh trains
// every layout and compares (docs/benchmarks.md).

/// One candidate layout and what the planner predicts for it.
public struct PlannedLayout: Sendable {
    public var config: TrainConfig
    public var dataParallel: Int
    /// Parameters, gradients and optimizer state on world rank 0 (the trainer's "memory:" line), bytes.
    public var stateBytes: Int
    /// The largest of that over the ranks (pipeline stages differ), bytes.
    public var largestStateBytes: Int
    /// Activations kept from forward to backward on the busiest rank (fp32, Korthikanti et al.'s count)
    /// and the other buffers training allocates (logits, residual streams, workspace, bucket scratch).
    public var activationBytes: Double
    public var computeSeconds: Double, communicationSeconds: Double, bubble: Double
    /// With more ranks than cores the job cannot go faster than all ranks' work over the cores.
    public var coresFloorSeconds = 0.0
    /// Work besides the model's FLOPs on every rank (ZeRO-2/3's page releases and refaults).
    public var overheadSeconds = 0.0
    /// More ranks than cores: what the step's blocking synchronizations wait for peers the scheduler has
    /// not run yet (SyncProbe, measured).
    public var waitSeconds = 0.0
    public var predictedSeconds: Double {
        max(computeSeconds / (1 - bubble), coresFloorSeconds) + overheadSeconds + communicationSeconds + waitSeconds
    }
    /// What world rank 0 assembles beside its training state to write the single-file checkpoint.
    public var checkpointBytes = 0.0
    /// The shared-memory lanes to the other ranks of this host (mapped populated, so all resident) and
    /// the arenas of the layout's groups.
    public var laneBytes = 0.0
    public var predictedBytes: Double {
        Double(largestStateBytes) + activationBytes + checkpointBytes + laneBytes + LayoutPlanner.processBytes
    }
    public var fits: Bool = true

    public var name: String {
        var parts: [String] = []
        if config.tensorParallel > 1 { parts.append("tp\(config.tensorParallel)" + (config.sequenceParallel ? "+sp" : "")) }
        if config.pipelineParallel > 1 { parts.append("pp\(config.pipelineParallel) \(config.pipelineSchedule.rawValue) m\(config.microbatches)") }
        if config.expertParallel > 1 { parts.append("ep\(config.expertParallel)") }
        parts.append("dp\(dataParallel)")
        if config.zeroStage > 0 { parts.append("ZeRO-\(config.zeroStage)") }
        return parts.joined(separator: " x ")
    }
}

/// Collective costs for the time model. A group whose size has a fitted tuning table (allreduce-bench
/// --tuning, measured with that many ranks on this host) is priced by the table's model of the algorithm
/// the trainer runs there; any other by a ring with per-message latency `alpha` and link bandwidth
/// `bandwidth` (two-shot, where the trainer runs it: two meetings instead of the ring's 2(n-1)
/// messages). The defaults are ranks of one host on their shared-memory lanes, for the sub-MiB messages
/// a step sends: 2 ranks measured 25 us at 256 KiB and 78 us at 1 MiB when spinning (~15
/// GB/s, taken as 10 for the caches a step shares), but the trainer does not spin, so each message
/// waits a blocking wake-up (~20 us here, as on TCP). Large messages fall well below that (4 ranks on 2
/// cores: 1.0-1.4 GB/s at 64 MiB), which only a table knows.
public struct CommunicationModel: Sendable {
    public var alpha = 20e-6
    public var bandwidth = 10e9
    /// Fitted tables by the group size they were measured at.
    public var tables: [Int: TuningTable] = [:]
    public init() {}

    /// An allreduce of `bytes` over `n` ranks running the algorithm `options` picks (the trainer's
    /// data-parallel options, or the defaults its other groups run), on a group with or without the
    /// host's shared arena (which two-shot needs); bf16 on the wire always runs the ring, as allreduce does.
    public func allreduce(bytes: Int, ranks n: Int, options: CollectiveOptions = CollectiveOptions(), sharedArena: Bool = false) -> Double {
        guard n > 1, bytes > 0 else { return 0 }
        let algorithm = options.wire == .bfloat16 ? .ring : options.algorithm(bytes: bytes, worldSize: n, sharedArena: sharedArena)
        if let cost = tables[n]?.models[algorithm.rawValue] { return cost.seconds(bytes: bytes) }
        // The ring: 2(n-1) messages; two-shot: two meetings, about the same bytes per rank.
        let messages = algorithm == .twoShot ? 2 : 2 * (n - 1)
        return Double(messages) * alpha + 2 * Double(n - 1) / Double(n) * Double(bytes) / bandwidth
    }

    /// A reduce-scatter or an allgather: half a ring allreduce (both run the ring), or on a group with a
    /// shared arena half a two-shot allreduce (one meeting per piece).
    public func half(bytes: Int, ranks n: Int, sharedArena: Bool = false) -> Double {
        allreduce(bytes: bytes, ranks: n, options: CollectiveOptions(algorithm: sharedArena ? .twoShot : .ring), sharedArena: sharedArena) / 2
    }

    public func pointToPoint(bytes: Int) -> Double { alpha + Double(bytes) / bandwidth }

    /// Each rank sends (n-1)/n of `bytes` in n-1 steps.
    public func allToAll(bytes: Int, ranks n: Int) -> Double {
        guard n > 1 else { return 0 }
        return Double(n - 1) * alpha + Double(n - 1) / Double(n) * Double(bytes) / bandwidth
    }
}

public struct LayoutPlanner {
    public let config: TrainConfig
    public let worldSize: Int
    public let vocabularySize: Int
    public var communication = CommunicationModel()
    /// What the trainer's data-parallel group runs (allreduce_algorithm, and auto's table when the
    /// config names allreduce_tuning: set `tuning`); its other groups run the defaults.
    public var dataParallelOptions: CollectiveOptions
    /// Cores the ranks run on (all on this host): with more ranks, their work shares them.
    public var cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Seconds per byte to hand pages back and fault them in again (ZeRO-2 releases the gradient pages
    /// other ranks own every step, ZeRO-3 the parameter pages too), measured by `measureRefault`.
    public var refaultSecondsPerByte = 0.0
    /// Rounds of timing: every layout's shards are measured this many times, in turn, and the fastest
    /// kept, so that a slow moment of a shared machine lands on one round, not on one layout (one round
    /// left the pipelines' compute 13 or 22 ms between two plans a minute apart); every
    /// synchronization probe this many times too, its median kept. Rounds after the first are skipped
    /// once timing has taken `timingBudgetSeconds` (a wide model's one round already takes minutes).
    public var timingRounds = 3
    public var timingBudgetSeconds = 30.0
    /// Ranks per host (nil: all on this one) and each lane's ring (SWIFT_DDP_SHM_KB; 0: no lanes): every
    /// rank maps a lane to each other rank of its host.
    public var ranksPerHost: Int?
    public var laneRingBytes = SharedMemorySetup.defaultRingBytes
    public var laneBytesPerRank: Double {
        guard laneRingBytes > 0 else { return 0 }
        return Double(max(ranksOnHost - 1, 0) * SharedMemoryLane.segmentBytes(ringBytes: laneRingBytes))
    }
    /// The arenas a layout's reducing groups run through: a tensor or data group of 2 or more ranks on
    /// one host has one of two slots per rank (the job's when it holds every rank, else its own:
    /// ParallelGroups). Only the pages a collective touches are resident: two-shot writes a piece of up
    /// to a slot into the rank's own slot and reads a segment of each other slot twice (its part to
    /// reduce, then the others' results), so of each half the first m bytes of its own slot and 2m/n of
    /// each other, m the group's largest message (a gradient bucket; a block's activations) up to a
    /// slot. A job's arena no group of the layout uses (pipelines) is not counted at all. On 4
    /// ranks of the recipe this is 5 MiB of the dp group's 8 (measured 4.8, /proc/PID/smaps). Under
    /// expert parallelism the expert-data-parallel group averages the experts' gradients (the first
    /// `expertGradientBytes` of the buffer) through an arena of its own too, the data group the rest.
    public func arenaBytes(_ c: TrainConfig, dataParallel dp: Int, gradientBytes: Int, expertGradientBytes: Int = 0) -> Double {
        func resident(_ n: Int, _ has: Bool, largestMessage: Int) -> Int {
            guard has else { return 0 }
            let m = min(laneRingBytes, largestMessage)
            return SharedArena.segmentBytes(ranks: n, slotBytes: 0) + 2 * (m + (n - 1) * 2 * m / n)
        }
        let bucket = Int(c.bucketMb * 1048576), expertData = expertDataGroup(c, dataParallel: dp)
        let tensor = resident(c.tensorParallel, tensorGroupHasArena(c.tensorParallel), largestMessage: activationBytes(c))
        let data = resident(dp, dataGroupHasArena(dp, tensorParallel: c.tensorParallel), largestMessage: min(gradientBytes - expertGradientBytes, bucket))
        let experts = resident(expertData.ranks, expertData.hasArena, largestMessage: min(expertGradientBytes, bucket))
        return Double(tensor + data + experts)
    }
    /// Whether a tensor-parallel group of `tp` ranks reduces through an arena: 2 or more ranks with lanes
    /// between all of them (tensor ranks are the layout's innermost, so a host holding a multiple of `tp`
    /// ranks holds whole groups).
    func tensorGroupHasArena(_ tp: Int) -> Bool { tp > 1 && laneRingBytes > 0 && ranksOnHost % tp == 0 }
    /// The same for a data-parallel group of `dp` ranks: 2 or more on one host. Its ranks are `tp` apart
    /// in a block of tp x dp consecutive ranks, so a host holding a multiple of that holds whole groups
    /// (pipeline stages across hosts, data parallelism within one).
    func dataGroupHasArena(_ dp: Int, tensorParallel tp: Int) -> Bool { dp > 1 && laneRingBytes > 0 && ranksOnHost % (tp * dp) == 0 }
    /// Under expert parallelism, the group that averages the experts' gradients (DataParallel.group(of:)):
    /// the dp / ep ranks holding the same experts, with an arena where the data group has one (ParallelGroups).
    /// Without expert parallelism, none (0 ranks).
    func expertDataGroup(_ c: TrainConfig, dataParallel dp: Int) -> (ranks: Int, hasArena: Bool) {
        let ranks = c.expertParallel > 1 ? dp / c.expertParallel : 0
        return (ranks, ranks > 1 && dataGroupHasArena(dp, tensorParallel: c.tensorParallel))
    }
    /// The ranks that share this host (and its cores).
    public var ranksOnHost: Int { ranksPerHost ?? worldSize }
    /// The process without a model (runtime, data, buffers), measured: a 1-layer 16-wide GPT's peak RSS
    /// (21.1 MiB since the trainer maps FoundationEssentials only; 31 with all of Foundation and ICU). A
    /// dp 4 rank of the recipe adds up to it: 44 MiB = 21 + state 12.3 + activations and buffers 6.3 +
    /// lanes 6, measured in smaps.
    public static let processBytes = 21.0 * 1048576

    public init(config: TrainConfig, worldSize: Int, vocabularySize: Int) {
        self.config = config; self.worldSize = worldSize; self.vocabularySize = vocabularySize
        dataParallelOptions = CollectiveOptions(algorithm: config.allreduceAlgorithm, wire: config.gradientCompression)
    }

    /// Prices collectives by the tables at `paths` (allreduce-bench --tuning, one per group size) and the
    /// config's allreduce_tuning, which the trainer's data-parallel auto also chooses by.
    public mutating func useTuning(tables paths: [String]) throws {
        communication.tables = [:]
        for table in try paths.map({ try TuningTable.load(path: $0) }) { communication.tables[table.worldSize] = table }
        if !config.allreduceTuning.isEmpty {
            let table: TuningTable
            do { table = try TuningTable.load(path: config.allreduceTuning) } catch { throw ConfigError(key: "allreduce_tuning", "\(error)") }
            dataParallelOptions.tuning = table
            if communication.tables[table.worldSize] == nil { communication.tables[table.worldSize] = table }
        }
    }

    /// How much longer a collective over `n` ranks of this host takes in training than `communication`
    /// prices it: with more ranks than cores, lanes move bytes with the CPU and every rank copies at the
    /// same phase of the step, so communication stretches over the cores as compute does. A table
    /// measured with n ranks here already holds n's share of that (nil: priced without a table).
    func sharedCores(ranks n: Int? = nil) -> Double {
        let sharing = max(1, Double(ranksOnHost) / Double(cores))
        guard let n, communication.tables[n] != nil else { return sharing }
        return sharing / max(1, Double(n) / Double(cores))
    }

    var configuration: GPTConfiguration {
        GPTConfiguration(vocabularySize: vocabularySize, blockSize: config.blockSize, layers: config.nLayer, heads: config.nHead,
                         embedding: config.nEmbd, bias: config.bias, gelu: config.gelu, experts: config.experts)
    }

    static func divisors(_ n: Int) -> [Int] { (1...max(n, 1)).filter { n % $0 == 0 } }

    /// Mixture-of-experts blocks among `layers`.
    func mixtures(in layers: Range<Int>) -> Int { config.experts.map { layers.filter($0.isExpertLayer).count } ?? 0 }

    /// The global batch every layout trains: the config's batch_size x grad_accum, read as one rank's run.
    public var globalBatch: Int { config.batchSize * config.gradAccum }

    /// Every layout of the world the trainer would accept at the same global batch (batch_size = global
    /// batch / data-parallel size; a pipeline splits that into its smallest micro-batch count of at
    /// least p that divides it), and the refused ones with the trainer's reason.
    public func candidates() -> (accepted: [TrainConfig], refused: [(name: String, reason: String)]) {
        var accepted: [TrainConfig] = [], refused: [(String, String)] = []
        for tp in Self.divisors(worldSize) {
            for pp in Self.divisors(worldSize / tp) {
                let dp = worldSize / (tp * pp)
                for ep in Self.divisors(dp) where config.nExperts > 0 || ep == 1 {
                    // ZeRO shards over data-parallel replicas: with one, every stage is the same layout.
                    for zero in 0...(dp > 1 ? 3 : 0) {
                        for sp in tp > 1 ? [false, true] : [false] {
                            var c = config
                            c.parallel = .manual
                            c.tensorParallel = tp; c.pipelineParallel = pp; c.expertParallel = ep; c.zeroStage = zero; c.sequenceParallel = sp
                            let name = "tp\(tp)\(sp ? "+sp" : "") pp\(pp) ep\(ep) dp\(dp) ZeRO-\(zero)"
                            guard globalBatch % dp == 0 else {
                                refused.append((name, "the global batch of \(globalBatch) sequences does not split over \(dp) data-parallel ranks")); continue
                            }
                            let sequences = globalBatch / dp
                            c.gradAccum = 1; c.batchSize = sequences
                            if pp > 1 {
                                guard let m = (pp...max(pp, sequences)).first(where: { sequences % $0 == 0 }) else {
                                    refused.append((name, "\(sequences) sequences per replica cannot fill \(pp) micro-batches")); continue
                                }
                                c.microbatches = m; c.batchSize = sequences / m; c.virtualStages = 1
                                if config.pipelineParallel <= 1 { c.pipelineSchedule = .oneFOneB }
                            }
                            do {
                                try c.validate()
                                _ = try ParallelLayout(worldSize: worldSize, tensorParallel: tp, pipelineParallel: pp, expertParallel: ep,
                                                       heads: c.nHead, experts: c.nExperts > 0 ? c.nExperts : nil)
                                accepted.append(c)
                            } catch let error as ConfigError {
                                refused.append((name, error.description))
                            } catch let error as LayoutError {
                                refused.append((name, error.description))
                            } catch {
                                refused.append((name, "\(error)"))
                            }
                        }
                    }
                }
            }
        }
        return (accepted, refused)
    }

    /// Parameters on the model shard of pipeline rank `pipelineRank` (its stages, when there is a
    /// `schedule`), tensor-parallel rank 0 and expert-parallel rank 0.
    func localParameters(_ c: TrainConfig, schedule: PipelineSchedule?, pipelineRank: Int) throws
        -> (count: Int, units: [[Range<Int>]]?, expertEnd: Int, readyOffsets: [Int]) {
        if let schedule {
            let layout = try PipelineRunner.layout(schedule: schedule, configuration: configuration, rank: pipelineRank, parts: c.tensorParallel,
                                                   expertParts: c.expertParallel)
            return (layout.totalCount, nil, c.expertParallel > 1 ? PipelineRunner.expertCount(of: layout) : 0, [0])
        }
        let gpt = GPT(configuration,
                      parallel: c.tensorParallel > 1 ? TensorParallelism(communicator: LocalOnly(rank: 0, size: c.tensorParallel),
                                                                         sequenceParallel: c.sequenceParallel) : nil,
                      exchange: c.expertParallel > 1 ? LocalOnly(rank: 0, size: c.expertParallel) : nil)
        return (gpt.parameters.count, c.zeroStage >= 3 ? gpt.parameterUnits : nil, c.expertParallel > 1 ? gpt.expertCount : 0,
                gpt.gradientReadyOffsets)
    }

    /// What data-parallel rank 0 of a replica holds, as Trainer.memoryHeld counts it.
    func stateBytes(_ c: TrainConfig, parameters psi: Int, units: [[Range<Int>]]?, expertEnd: Int, readyOffsets: [Int],
                    dataParallel n: Int) -> Int {
        let stateBuffers = c.optimizer == .adamw ? 2 : (c.momentum > 0 ? 1 : 0)
        var owned = psi
        if n > 1 && c.zeroStage >= 1 {
            let buckets = DataParallel.buckets(count: psi, bucketElements: max(1, Int(c.bucketMb * 1048576) / 4), units: units, expertEnd: expertEnd,
                                               readyOffsets: readyOffsets)
            owned = DataParallel.ownedRanges(buckets: buckets, rank: 0, groupSize: n, expertEnd: expertEnd, expertParallel: c.expertParallel)
                .reduce(0) { $0 + $1.count }
        }
        let parameters = c.zeroStage >= 3 && n > 1 ? owned : psi, gradients = c.zeroStage >= 2 && n > 1 ? owned : psi
        return 4 * (parameters + gradients + stateBuffers * owned)
    }

    /// The busiest rank's blocking synchronizations per step, each priced by `penalty(group, ring steps,
    /// compute between two of them, each step's wire time)`: tensor-parallel collectives (per block 4
    /// allreduces, or with sequence parallelism 4 forward and 6 backward reduce-scatters and all-gathers;
    /// the embedding and the vocabulary-parallel head 4 more), ZeRO-3's gathers (two per unit and
    /// micro-batch), the mixtures' all-to-alls under expert parallelism (3 forward, 2 backward per
    /// mixture and micro-batch, each ep - 1 exchanges) and the wait for the last bucket. A pipeline's
    /// hand-offs and its stages' collectives are not here: PipelineProbe runs them with its passes.
    public func oversubscribedWaits(_ c: TrainConfig, dataParallel dp: Int, microbatches: Double, compute: Double, layers: Int,
                                    gradientBytes: Int, penalty: (Int, Int, Double, Double) -> Double) -> Double {
        let tp = c.tensorParallel
        var waits = 0.0
        if tp > 1 && c.pipelineParallel == 1 {
            let block = Self.blockCollectives(sequenceParallel: c.sequenceParallel)
            let perMicro = Double(layers * (block.forward + block.backward) + 4)
            let steps = tensorCollectiveSteps(sequenceParallel: c.sequenceParallel, tensorParallel: tp)
            let wire = wireTime(ofStep: tensorParallelCollective(c), steps: steps)
            waits += microbatches * perMicro * penalty(tp, steps, compute / (microbatches * perMicro), wire)
        }
        if c.expertParallel > 1 && c.pipelineParallel == 1 && config.experts != nil {
            let ep = c.expertParallel, perMicro = Double(5 * mixtures(in: 0..<config.nLayer))
            waits += microbatches * perMicro * penalty(ep, ep - 1, compute / (microbatches * perMicro), 0)
        }
        if dp > 1 && c.zeroStage == 3 {
            let perMicro = Double(2 * (config.nLayer + 2))
            let gather = dataParallelHalf(bytes: gradientBytes / (config.nLayer + 2), ranks: dp, tensorParallel: tp)
            let steps = dataParallelHalfSteps(dp, tensorParallel: tp)
            waits += microbatches * perMicro * penalty(dp, steps, compute / (microbatches * perMicro), wireTime(ofStep: gather, steps: steps))
        }
        if dp > 1 {
            // Buckets are averaged on each rank's communication thread while backward goes on; the
            // compute thread blocks once, for the last of them (4 ranks on 2 cores: dp 4 measured at the
            // cores' floor, where a wait per bucket predicted 3-8 ms more).
            let bucket = bucketAllreduce(c, gradientBytes: gradientBytes, ranks: dp)
            waits += penalty(dp, 2 * (dp - 1), compute, wireTime(ofStep: bucket, steps: 2 * (dp - 1)))
        }
        return waits
    }

    /// Ranks on more than one host talk over links, whose wire time takes no core (each receive sleeps,
    /// then needs a core again); ranks of one host copy through shared memory, which is CPU work.
    public var crossesLinks: Bool { ranksOnHost < worldSize }

    /// One ring step's share of a collective's `seconds` when that is wire time, else 0 (the probes then
    /// run the steps back to back).
    func wireTime(ofStep seconds: Double, steps: Int) -> Double { crossesLinks && steps > 0 ? seconds / Double(steps) : 0 }

    /// One of a block's tensor-parallel collectives: an allreduce of the activations, or with sequence
    /// parallelism a reduce-scatter or all-gather (half of one).
    func tensorParallelCollective(_ c: TrainConfig) -> Double {
        let bytes = activationBytes(c)
        let arena = tensorGroupHasArena(c.tensorParallel)
        return c.sequenceParallel ? communication.half(bytes: bytes, ranks: c.tensorParallel, sharedArena: arena)
            : communication.allreduce(bytes: bytes, ranks: c.tensorParallel, sharedArena: arena)
    }

    /// One micro-batch's activations, fp32: a tensor-parallel collective's message and a pipeline hand-off's.
    func activationBytes(_ c: TrainConfig) -> Int { 4 * c.batchSize * c.blockSize * config.nEmbd }

    /// The allreduce of one gradient bucket (of the whole gradient when that is smaller).
    func bucketAllreduce(_ c: TrainConfig, gradientBytes: Int, ranks: Int) -> Double {
        dataParallelAllreduce(bytes: min(gradientBytes, Int(c.bucketMb * 1048576)), ranks: ranks, tensorParallel: c.tensorParallel)
    }

    /// An allreduce on the data-parallel group: through its shared arena where its ranks share a host
    /// (the job's when it is the whole job, else its own).
    func dataParallelAllreduce(bytes: Int, ranks dp: Int, tensorParallel tp: Int) -> Double {
        communication.allreduce(bytes: bytes, ranks: dp, options: dataParallelOptions, sharedArena: dataGroupHasArena(dp, tensorParallel: tp))
    }

    /// The data-parallel averaging of a step's gradients on the critical path (before the cores' sharing),
    /// `expertGradientBytes` of them the experts' under expert parallelism, for a step computing
    /// `compute` seconds. Buckets overlap the rest of backward (about 2/3 of the compute) except the last
    /// one. A pipeline averages its gradients after its passes (Trainer.pipelineStep), and expert
    /// parallelism after backward (its all-to-alls run during it; Trainer.overlapsBuckets): nothing
    /// overlaps. Ranks outnumbering a host's cores leave no core idle during backward, and on the lanes
    /// moving bytes is CPU work: the buckets hide under nothing there either (dp 4 on 2 cores, wide
    /// model: 31-85 ms exposed where overlapping them predicted 4.5). The experts' buckets go to the
    /// expert-data-parallel group (dp / ep ranks, none when that is one rank; DataParallel.group(of:)),
    /// the rest to the data group.
    public func gradientCommunication(_ layout: TrainConfig, dataParallel dp: Int, gradientBytes: Int, expertGradientBytes: Int,
                                      compute: Double) -> Double {
        let tp = layout.tensorParallel
        let bucket = bucketAllreduce(layout, gradientBytes: gradientBytes, ranks: dp)
        let expertData = expertDataGroup(layout, dataParallel: dp), denseBytes = gradientBytes - expertGradientBytes
        let experts = expertGradientBytes > 0 && expertData.ranks > 1
            ? expertDataCollectives(bytes: expertGradientBytes, ranks: expertData.ranks, sharedArena: expertData.hasArena, zeroStage: layout.zeroStage) : 0
        let overlap = layout.pipelineParallel > 1 || layout.expertParallel > 1 || ranksOnHost > cores ? 0 : compute * 2 / 3
        switch layout.zeroStage {
        case 0: return max(dataParallelAllreduce(bytes: denseBytes, ranks: dp, tensorParallel: tp) + experts - overlap, bucket)
        case 1, 2:
            // Reduce-scatter while backward runs; the updated pieces are gathered after the step, with
            // nothing left to overlap.
            let half = dataParallelHalf(bytes: denseBytes, ranks: dp, tensorParallel: tp) + experts / 2
            return max(half - overlap, bucket / 2) + half
        default:
            // ZeRO-3 gathers the parameters for forward and for backward besides reduce-scattering
            // (the experts' on their own group, as their gradients).
            return max(3 * (dataParallelHalf(bytes: denseBytes, ranks: dp, tensorParallel: tp) + experts / 2) - overlap, bucket)
        }
    }

    /// The experts' gradients averaged over an expert-data-parallel group of `ranks` (through its arena
    /// when it has one): an allreduce, or with ZeRO a reduce-scatter and an allgather.
    func expertDataCollectives(bytes: Int, ranks: Int, sharedArena arena: Bool, zeroStage: Int) -> Double {
        zeroStage == 0 ? communication.allreduce(bytes: bytes, ranks: ranks, options: dataParallelOptions, sharedArena: arena)
            : 2 * communication.half(bytes: bytes, ranks: ranks, sharedArena: arena)
    }

    /// ZeRO's reduce-scatter or allgather on the data-parallel group (through its arena as above).
    func dataParallelHalf(bytes: Int, ranks dp: Int, tensorParallel tp: Int) -> Double {
        communication.half(bytes: bytes, ranks: dp, sharedArena: dataGroupHasArena(dp, tensorParallel: tp))
    }

    /// A transformer block's tensor-parallel collectives per micro-batch (TransformerBlock): 2 allreduces
    /// forward and 2 backward; with sequence parallelism 4 all-gathers and reduce-scatters forward and 6
    /// backward (the LayerNorm outputs gathered again for the weight gradients).
    static func blockCollectives(sequenceParallel: Bool) -> (forward: Int, backward: Int) { sequenceParallel ? (4, 6) : (2, 2) }

    /// Ring steps of one of those collectives over `tensorParallel` ranks: an allreduce 2 (tp - 1), an
    /// all-gather or reduce-scatter (sequence parallelism) tp - 1.
    static func collectiveRingSteps(sequenceParallel: Bool, tensorParallel tp: Int) -> Int { sequenceParallel ? tp - 1 : 2 * (tp - 1) }

    /// The synchronizations of one tensor-parallel collective: its ring steps, or through the group's
    /// arena (its ranks on one host) two meetings for an allreduce and one for a reduce-scatter or
    /// an all-gather.
    func tensorCollectiveSteps(sequenceParallel sp: Bool, tensorParallel tp: Int) -> Int {
        tensorGroupHasArena(tp) ? (sp ? 1 : 2) : Self.collectiveRingSteps(sequenceParallel: sp, tensorParallel: tp)
    }

    /// The same for ZeRO-3's gathers and reduce-scatters on the data-parallel group.
    func dataParallelHalfSteps(_ dp: Int, tensorParallel tp: Int) -> Int { dataGroupHasArena(dp, tensorParallel: tp) ? 1 : dp - 1 }

    /// Rank 0's assembly for a single-file checkpoint (Trainer.saveCheckpoint): under ZeRO the optimizer
    /// state's pieces gathered into full buffers (and, at stage 3, the parameters pinned whole); under
    /// tensor, pipeline or expert parallelism the whole model and each state buffer assembled, plus what
    /// assembling takes on the way (below).
    func checkpointBytes(_ c: TrainConfig, localParameters: Int, dataParallel dp: Int, wholeModelBytes: Double) -> Double {
        let stateBuffers = Double(c.optimizer == .adamw ? 2 : (c.momentum > 0 ? 1 : 0))
        let local = 4 * Double(localParameters)
        var bytes = 0.0
        if dp > 1 && c.zeroStage >= 1 { bytes += stateBuffers * local }
        if dp > 1 && c.zeroStage == 3 { bytes += local * Double(dp - 1) / Double(dp) }
        let assembling = max(c.tensorParallel, c.expertParallel)
        if c.pipelineParallel > 1 || assembling > 1 {
            // Trainer.fullModel and PipelineTask.fullModel: the whole model and each state buffer, plus
            // one received shard under tensor or expert parallelism (a pipeline's stages arrive straight
            // into their places).
            bytes += (stateBuffers + 1) * wholeModelBytes + (assembling > 1 ? local : 0)
        }
        return bytes
    }

    /// Where a layout's compute time comes from.
    public enum ComputeSource: Sendable {
        /// One forward + backward + update of the whole model on batch_size sequences on one rank,
        /// given, scaled by the busiest rank's share of the model's FLOPs (quick, and what tests use).
        case scaled(stepSeconds: Double)
        /// Each layout's shards built and timed on this machine (`timeShards`), `copies` at once.
        case measured(copies: Int)
    }

    /// Plans every accepted layout with compute scaled from the whole model's step.
    public func plan(stepSeconds: Double, memoryPerRank: Double?) throws -> [PlannedLayout] {
        try plan(compute: .scaled(stepSeconds: stepSeconds), memoryPerRank: memoryPerRank)
    }

    /// Plans every accepted layout, ranked: those that fit `memoryPerRank` first, each group by
    /// predicted step time.
    public func plan(compute source: ComputeSource, memoryPerRank: Double?) throws -> [PlannedLayout] {
        let v = Double(vocabularySize), width = Double(config.nEmbd), layers = Double(config.nLayer)
        let gpt = configuration
        let fullFLOPs = gpt.trainingFLOPs(batch: config.batchSize, time: config.blockSize)
        let perLayerFLOPs = (fullFLOPs - 6 * v * width * Double(config.batchSize * config.blockSize)) / layers
        var out: [PlannedLayout] = []
        var timed: [String: [ShardTime]] = [:]
        var probed: [String: Double] = [:]
        /// SyncProbe's penalty, cached by its arguments (work and wire time rounded to 10 µs).
        func syncPenalty(group: Int, steps: Int, work: Double, transfer: Double) -> Double {
            let key = "\(group) \(steps) \(Int(work * 1e5)) \(Int(transfer * 1e5))"
            if let known = probed[key] { return known }
            // The median: a wait is the scheduler's luck, whose typical value is the cost (the fastest
            // of several is the luckiest, where for compute it is the one least disturbed).
            let measured = (0..<max(timingRounds, 1)).map { _ in
                SyncProbe.penalty(world: worldSize, group: group, steps: steps, work: work, transfer: transfer, cores: cores)
            }.sorted()[max(timingRounds, 1) / 2]
            probed[key] = measured
            return measured
        }
        var whole = config
        whole.tensorParallel = 1; whole.expertParallel = 1
        let wholeModelBytes = 4 * Double(try localParameters(whole, schedule: nil, pipelineRank: 0).count)
        let accepted = candidates().accepted
        if case .measured(let copies) = source {
            // Distinct shards, timed in turn, each round keeping the faster time per rank.
            var distinct: [(key: String, layout: TrainConfig)] = []
            for layout in accepted where !distinct.contains(where: { $0.key == shardKey(layout) }) { distinct.append((shardKey(layout), layout)) }
            let start = monotonicSeconds()
            for round in 0..<max(timingRounds, 1) where round == 0 || monotonicSeconds() - start < timingBudgetSeconds {
                for (key, layout) in distinct {
                    let times = try timeShards(layout, copies: copies)
                    timed[key] = timed[key].map {
                        zip($0, times).map { ShardTime(forwardBackward: min($0.forwardBackward, $1.forwardBackward), update: min($0.update, $1.update)) }
                    } ?? times
                }
            }
        }
        for layout in accepted {
            let tp = layout.tensorParallel, pp = layout.pipelineParallel, ep = layout.expertParallel
            let dp = worldSize / (tp * pp)
            let schedule = pp > 1 ? try PipelineSchedule(layout.pipelineSchedule, pipelineParallel: pp, microbatches: layout.microbatches,
                                                          virtualStages: layout.virtualStages) : nil
            var largest = 0, first = 0, localParameters = 0, expertParameters = 0
            for stage in 0..<pp {
                let local = try self.localParameters(layout, schedule: schedule, pipelineRank: stage)
                let bytes = stateBytes(layout, parameters: local.count, units: local.units, expertEnd: local.expertEnd,
                                       readyOffsets: local.readyOffsets, dataParallel: dp)
                if stage == 0 { first = bytes; localParameters = local.count; expertParameters = local.expertEnd }
                largest = max(largest, bytes)
            }
            let microbatches = Double(layout.gradAccum * (pp > 1 ? layout.microbatches : 1))
            // ZeRO updates only the pieces a rank owns.
            let updateShare = layout.zeroStage >= 1 ? 1 / Double(dp) : 1
            let compute: Double
            var coresFloor: Double
            // Whether PipelineProbe ran this pipeline's step, hand-offs included.
            var pipelineProbed = false
            switch source {
            case .scaled(let stepSeconds):
                // The step's micro-batches times the measured micro-batch, scaled by the share of the
                // model's FLOPs on the busiest rank (a pipeline's last stage adds the head).
                var share = 1.0 / Double(tp)
                if let schedule {
                    let ranges = try schedule.layerRanges(layers: config.nLayer)
                    let busiest = ranges.indices.map { s -> Double in
                        Double(ranges[s].count) * perLayerFLOPs + (s == ranges.count - 1 ? fullFLOPs - perLayerFLOPs * Double(config.nLayer) : 0)
                    }.max() ?? fullFLOPs
                    share = busiest / fullFLOPs / Double(tp)
                }
                // stepSeconds is one micro-batch of the config's batch_size; compute scales with the sequences.
                compute = microbatches * stepSeconds * Double(layout.batchSize) / Double(config.batchSize) * share
                // The whole global batch's work (one rank doing it all, as measured) over the cores.
                coresFloor = stepSeconds * Double(globalBatch) / Double(config.batchSize) / Double(cores)
            case .measured(let copies):
                let times = try timed[shardKey(layout)] ?? timeShards(layout, copies: copies)
                let perRank = times.map { Double(microbatches) * $0.forwardBackward + updateShare * $0.update }
                compute = perRank.max() ?? 0
                // Every rank's work over the cores (a pipeline's idle ranks leave theirs to the others).
                coresFloor = perRank.reduce(0, +) * Double(dp * tp) / Double(cores)
                if let schedule, worldSize > cores {
                    // The pipeline's own step with its dp x tp copies sharing the host's cores, run by
                    // PipelineProbe (its median over the timing rounds): dependencies and wake-ups leave
                    // cores idle that the bound above counts as busy. Backward is taken as twice the forward.
                    let chunksPerRank = Double(layout.virtualStages)
                    let perStage = (0..<schedule.stageCount).map { times[$0 % pp].forwardBackward / chunksPerRank }
                    let costs = PipelineCosts(forward: perStage.map { $0 / 3 }, backward: perStage.map { 2 * $0 / 3 },
                                              backwardInput: perStage.map { $0 / 3 }, backwardWeight: perStage.map { $0 / 3 },
                                              transfer: communication.pointToPoint(bytes: activationBytes(layout)),
                                              step: updateShare * (times.map(\.update).max() ?? 0))
                    // A stage's tensor-parallel collectives per micro-batch (as oversubscribedWaits counts them),
                    // or under expert parallelism its mixtures' all-to-alls (counts, dispatch and combine
                    // forward; two backward), each a meeting of the stage's expert group: ep neighbouring
                    // data-parallel copies, as the layout numbers them.
                    let ranges = try schedule.layerRanges(layers: config.nLayer), sp = layout.sequenceParallel
                    let block = Self.blockCollectives(sequenceParallel: sp)
                    let stageMixtures = ranges.map(mixtures(in:))
                    let meets = tp > 1 ? tp : ep
                    let collectives: (PipelineAction) -> Int = { a in
                        if tp == 1 {
                            switch a.kind {
                            case .forward: return 3 * stageMixtures[a.stage]
                            case .backward, .backwardInput: return 2 * stageMixtures[a.stage]
                            default: return 0
                            }
                        }
                        let ends = (a.stage == 0 ? 1 : 0) + (a.stage == ranges.count - 1 ? 1 : 0)
                        switch a.kind {
                        case .forward: return ranges[a.stage].count * block.forward + ends
                        case .backward, .backwardInput: return ranges[a.stage].count * block.backward + ends
                        default: return 0
                        }
                    }
                    let rounds = max(timingRounds, 1)
                    let ringSteps = tp > 1 ? tensorCollectiveSteps(sequenceParallel: sp, tensorParallel: tp) : ep - 1
                    let ringTransfer = tp > 1 ? wireTime(ofStep: tensorParallelCollective(layout), steps: ringSteps) : 0
                    let stepEnd = pipelineStepEnd(layout, dataParallel: dp, gradientBytes: 4 * localParameters)
                    let pass = (0..<rounds).map { _ in
                        PipelineProbe.stepTime(schedule, costs: costs, copies: dp * tp, tensorParallel: meets, collectives: collectives,
                                               ringSteps: ringSteps, ringTransfer: ringTransfer, stepEnd: stepEnd)
                    }.sorted()[rounds / 2]
                    coresFloor = max(coresFloor, pass * Double(layout.gradAccum))
                    pipelineProbed = pass > 0
                }
            }
            var overhead = 0.0
            if dp > 1 && layout.zeroStage >= 2 {
                // Pages of the pieces other ranks own go back to the kernel and fault in again: the
                // gradients every step, and at stage 3 the parameters for forward and again for backward.
                let released = Double(4 * localParameters) * Double(dp - 1) / Double(dp)
                overhead = refaultSecondsPerByte * released * (layout.zeroStage == 3 ? 3 : 1)
                // Oversubscribed, every rank's refaults take turns on the cores.
                if worldSize > cores { overhead *= Double(worldSize) / Double(cores) }
            }
            // Communication on the critical path.
            let activationBytes = self.activationBytes(layout)
            var comm = 0.0
            // A probed pipeline's stages ran their tensor-parallel collectives' wire time in the probe.
            if tp > 1 && !(pipelineProbed && crossesLinks) {
                let block = Self.blockCollectives(sequenceParallel: layout.sequenceParallel)
                comm += microbatches * Double(config.nLayer / pp) * Double(block.forward + block.backward) * tensorParallelCollective(layout)
                    * sharedCores(ranks: tp)
            }
            // A probed pipeline's hand-offs are in its step already (each waited out on the send thread).
            if pp > 1 && !pipelineProbed { comm += microbatches * 2 * communication.pointToPoint(bytes: activationBytes) * sharedCores() }
            if ep > 1, let moe = config.experts {
                // A pipeline rank exchanges tokens for the mixtures of its stages only (the busiest rank's).
                var exchanging = mixtures(in: 0..<config.nLayer)
                if let schedule {
                    let ranges = try schedule.layerRanges(layers: config.nLayer)
                    exchanging = (0..<pp).map { r in schedule.stages(ofRank: r).reduce(0) { $0 + mixtures(in: ranges[$1]) } }.max() ?? 0
                }
                comm += microbatches * Double(exchanging) * 4 * communication.allToAll(bytes: moe.topK * activationBytes, ranks: ep) * sharedCores()
            }
            // A probed pipeline's gradients were averaged in its step (PipelineStepEnd).
            if dp > 1 && !pipelineProbed {
                comm += gradientCommunication(layout, dataParallel: dp, gradientBytes: 4 * localParameters,
                                              expertGradientBytes: 4 * expertParameters, compute: compute) * sharedCores(ranks: dp)
            }
            let live = schedule.map { $0.kind == .gpipe ? layout.microbatches : min(layout.microbatches, pp) } ?? 1
            // This implementation's kept tensors of the busiest rank's layers, for each micro-batch alive.
            var keptLayers = Array(0..<config.nLayer)
            if let schedule {
                let ranges = try schedule.layerRanges(layers: config.nLayer)
                keptLayers = (0..<pp).map { r in schedule.stages(ofRank: r).flatMap { Array(ranges[$0]) } }.max { $0.count < $1.count } ?? []
            }
            let activations = Double(keptLayers.reduce(0) {
                $0 + gpt.keptActivationBytes(layer: $1, batch: layout.batchSize, time: layout.blockSize, tensorParallel: tp,
                                             sequenceParallel: layout.sequenceParallel)
            } * live)
            // Buffers besides the state and the kept activations, fp32: the logits and their gradient, the
            // residual streams, the shared backward workspace (the MLP's hidden buffer, one for the GELU
            // output and both gradients, three beside a mixture's own, the first of them holding
            // attention's QKV and heads gradients after, a LayerNorm output) and, with data parallelism,
            // the communication scratch of one bucket.
            let rows = Double(layout.batchSize * layout.blockSize), t = Double(tp)
            let mixed = (0..<config.nLayer).contains { gpt.experts(inLayer: $0) != nil }
            let hiddenBuffers = mixed ? 3.0 : 1.0, localWidth = layout.sequenceParallel ? width / t : width
            var buffers = 4 * rows * (2 * v / t + (layers / Double(pp) + 3) * width + hiddenBuffers * 4 * width / t
                                      + 2 * width + localWidth)
            if dp > 1 { buffers += 1.5 * layout.bucketMb * 1048576 }
            var planned = PlannedLayout(config: layout, dataParallel: dp, stateBytes: first, largestStateBytes: largest, activationBytes: activations + buffers,
                                        computeSeconds: compute, communicationSeconds: comm, bubble: schedule?.formulaBubble ?? 0)
            // Oversubscribed: all ranks' work over the cores bounds the step from below.
            planned.overheadSeconds = overhead
            if worldSize > cores {
                planned.coresFloorSeconds = coresFloor
                if case .measured = source, !pipelineProbed {
                    planned.waitSeconds = oversubscribedWaits(layout, dataParallel: dp, microbatches: microbatches, compute: compute,
                                                              layers: keptLayers.count, gradientBytes: 4 * localParameters, penalty: syncPenalty)
                }
            }
            planned.checkpointBytes = checkpointBytes(layout, localParameters: localParameters, dataParallel: dp, wholeModelBytes: wholeModelBytes)
            planned.laneBytes = laneBytesPerRank + arenaBytes(layout, dataParallel: dp, gradientBytes: 4 * localParameters,
                                                              expertGradientBytes: 4 * expertParameters)
            if let memoryPerRank { planned.fits = planned.predictedBytes <= memoryPerRank }
            out.append(planned)
        }
        return out.sorted { ($0.fits ? 0 : 1, $0.predictedSeconds) < ($1.fits ? 0 : 1, $1.predictedSeconds) }
    }

    /// What Trainer.pipelineStep synchronizes between a pipeline's last pass and its update, for the
    /// probe: the tied embedding's sum and the gradient norm's allreduce over the stages (one ring step
    /// and an allreduce's 2 (p - 1)); the gradients' allreduce over the data-parallel group, bucket by
    /// bucket, each 2 (dp - 1) ring steps (under ZeRO-1 a reduce-scatter's dp - 1 before the update and an
    /// all-gather's after it) of as many hand-offs as the ring's pieces cut a segment into, each a share
    /// of the collective's priced time (copying on the core on one host, wire time across links). Each
    /// hand-off is a wait on shared cores: counted as one step, pp 2 x dp 2 ran half the context switches
    /// in the probe that it ran in training.
    public func pipelineStepEnd(_ c: TrainConfig, dataParallel dp: Int, gradientBytes: Int) -> PipelineStepEnd {
        let p = c.pipelineParallel
        var end = PipelineStepEnd(pipelineSteps: p > 1 ? 1 + 2 * (p - 1) : 0)
        guard dp > 1 else { return end }
        let sharded = c.zeroStage >= 1
        let seconds = sharded ? dataParallelHalf(bytes: gradientBytes, ranks: dp, tensorParallel: c.tensorParallel)
            : dataParallelAllreduce(bytes: gradientBytes, ranks: dp, tensorParallel: c.tensorParallel)
        // The trainer's buckets, each ring step moving the largest segment (segment 0) in pieces.
        let buckets = bucketRanges(count: gradientBytes / 4, bucketElements: max(1, Int(c.bucketMb * 1048576) / 4))
        let handOffs = max(dp - 1, buckets.reduce(0) { total, bucket in
            let segment = segmentRange(count: bucket.count, parts: dp, index: 0).count
            return total + (segment + ringPieceElements - 1) / ringPieceElements * (dp - 1)
        })
        end.dataSteps = sharded ? handOffs : 2 * handOffs
        end.gatherSteps = sharded ? handOffs : 0
        end.dataTransfer = wireTime(ofStep: seconds, steps: end.dataSteps)
        end.dataWork = crossesLinks ? 0 : seconds / Double(end.dataSteps)
        return end
    }

    /// Layouts whose ranks hold the same shards and run the same micro-batches time the same.
    func shardKey(_ layout: TrainConfig) -> String {
        "\(layout.tensorParallel) \(layout.sequenceParallel) \(layout.pipelineParallel) \(layout.pipelineSchedule) \(layout.microbatches) \(layout.virtualStages) \(layout.batchSize)"
    }

    /// Seconds per byte to release pages (madvise) and touch them again as backward's accumulation
    /// does (a read maps the zero page, the write then faults again), over 16 MiB, best of 3.
    public static func measureRefault() -> Double {
        let count = 4 << 20, floatsPerPage = max(1, sysconf(Int32(_SC_PAGESIZE)) / 4)
        let buffer = FloatBuffer(pagedCount: count)
        buffer.buffer.update(repeating: 1)
        var best = Double.infinity, sum: Float = 0
        for _ in 0..<3 {
            let start = monotonicSeconds()
            buffer.zero(0..<count)
            for page in stride(from: 0, to: count, by: floatsPerPage) { sum += buffer.base[page] }
            buffer.buffer.update(repeating: 1 + sum)
            best = min(best, monotonicSeconds() - start)
        }
        return best / Double(4 * count)
    }

    /// The ranked table `ddp-train plan` prints.
    public static func table(_ plans: [PlannedLayout], refused: [(name: String, reason: String)], memoryPerRank: Double?) -> [String] {
        var lines = ["| # | layout | predicted ms/step | compute ms | comm ms | waits ms | bubble | state MiB (rank 0 / largest) | activations + buffers MiB | predicted MiB/rank | fits |",
                     "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for (i, p) in plans.enumerated() {
            lines.append(format("| %d | %@ | %.2f | %.2f | %.2f | %.2f | %.3f | %.2f / %.2f | %.2f | %.1f | %@ |", i + 1, p.name, p.predictedSeconds * 1000,
                                p.computeSeconds * 1000, p.communicationSeconds * 1000, p.waitSeconds * 1000, p.bubble, Double(p.stateBytes) / 1048576,
                                Double(p.largestStateBytes) / 1048576, p.activationBytes / 1048576, p.predictedBytes / 1048576,
                                memoryPerRank == nil ? "-" : (p.fits ? "yes" : "no")))
        }
        if !refused.isEmpty {
            lines.append("")
            lines.append("Refused (\(refused.count)):")
            for r in refused { lines.append("- \(r.name): \(r.reason)") }
        }
        return lines
    }
}
