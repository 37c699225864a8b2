import Collectives
import FoundationEssentials
import Dispatch
import Glibc
import NN
import Rendezvous

// Runs this rank's list of a pipeline schedule on the GPT's stages: receives block (on the group's
// timeout, naming the peer), sends go through the sender thread, compute runs in list order. Each
// stage has as many activation slots as the list ever keeps alive for it, so memory is what the
// schedule says and a step that would need more is a bug caught by a precondition. The measured
// intervals of each step feed the timeline and the bubble figures.

extension Array where Element == PipelineInterval {
    /// Seconds of compute passes among these intervals (waits and the step's flush left out).
    public var busySeconds: Double {
        filter { $0.action.kind.isCompute && $0.action.kind != .step }.reduce(0) { $0 + $1.end - $1.start }
    }
}

public final class PipelineRunner {
    public let schedule: PipelineSchedule
    public let group: ProcessGroup
    public let configuration: GPTConfiguration
    /// This rank's stages, by stage index.
    public let stages: [Int: GPTStage]
    /// The tensors of all of them (this tensor rank's shards under tensor parallelism).
    public let parameters: ParameterSet
    /// How `parameters` relate to the whole tensors across the tensor-parallel group (unsharded without one).
    public let sharding: ParameterSharding
    public let parallel: TensorParallelism?
    /// Under expert parallelism: the expert group of this rank's stages (its ranks run the same stages).
    public let exchange: ExpertExchange?
    /// Floats at the start of `parameters` that are expert tensors (0 for a dense model).
    public let expertCount: Int
    let sender: PipelineSender
    /// The ranks of the first and the last stage, which both hold the tied embedding (nil elsewhere,
    /// and when one rank holds both).
    let tiedPair: ProcessGroup?

    public struct StepReport: Sendable {
        /// Mean loss over the micro-batches, on the rank holding the last stage.
        public var loss: Float?
        /// Mean over the micro-batches of this rank's mixtures' auxiliary losses (0 for a dense model).
        public var auxiliaryLoss: Float = 0
        /// Compute passes and blocked receives of this step, in seconds from its start.
        public var intervals: [PipelineInterval]
        /// Most micro-batches alive at once on this rank.
        public var peakLive: Int
        public var seconds: Double
        /// When the step began on this host's monotonic clock (ns), which all processes of a host share.
        public var startNanoseconds: UInt64 = 0

        /// Seconds of compute passes (waits and the step's flush left out).
        public var busySeconds: Double { intervals.busySeconds }
    }

    /// One parameter set for all of pipeline rank `rank`'s stages (one optimizer, one gradient buffer).
    /// `parts`: the tensor-parallel size, `expertParts` the expert-parallel one. The experts of all its
    /// stages come first, as in the GPT's buffer (data parallelism averages them over another group).
    public static func layout(schedule: PipelineSchedule, configuration: GPTConfiguration, rank: Int, parts: Int = 1,
                              expertParts: Int = 1) throws -> ParameterSet.Layout {
        let ranges = try schedule.layerRanges(layers: configuration.layers)
        var layout = ParameterSet.Layout()
        let stages = schedule.stages(ofRank: rank)
        for s in stages { GPTStage.registerExperts(&layout, configuration, layers: ranges[s], parts: parts, expertParts: expertParts) }
        for s in stages {
            GPTStage.register(&layout, configuration, layers: ranges[s], isFirst: s == 0, isLast: s == schedule.stageCount - 1, parts: parts,
                              experts: false)
        }
        return layout
    }

    /// Floats of `layout`'s expert tensors, all at its start.
    public static func expertCount(of layout: ParameterSet.Layout) -> Int { layout.count { $0.contains(".mlp.experts.") } }

    /// `group` is the pipeline group: its rank r runs the schedule's list r. `parallel` splits every
    /// stage over a tensor-parallel group (whose ranks run the same list on their pipeline groups);
    /// `exchange` splits the mixtures' experts over an expert group (likewise).
    public init(schedule: PipelineSchedule, group: ProcessGroup, configuration: GPTConfiguration, parallel: TensorParallelism? = nil,
                exchange: ExpertExchange? = nil) throws {
        guard group.worldSize == schedule.pipelineParallel else {
            throw PipelineError(message: "pipeline_parallel \(schedule.pipelineParallel) needs a pipeline group of that size, not \(group.worldSize)")
        }
        guard schedule.stageCount <= 512, schedule.microbatches <= 1024 else {
            throw LayoutError(key: "microbatches", "at most 512 stages and 1024 micro-batches (message tags), not \(schedule.stageCount) and \(schedule.microbatches)")
        }
        let ranges = try schedule.layerRanges(layers: configuration.layers)
        self.schedule = schedule; self.group = group; self.configuration = configuration
        let last = schedule.stageCount - 1
        let parallel = (parallel?.size ?? 1) > 1 ? parallel : nil
        guard parallel == nil || schedule.kind != .zeroBubbleH1 else {
            throw LayoutError(key: "pipeline_schedule", Self.splitBackwardRefusal)
        }
        self.parallel = parallel
        let exchange = (exchange?.size ?? 1) > 1 ? exchange : nil
        self.exchange = exchange
        let layout = try Self.layout(schedule: schedule, configuration: configuration, rank: group.rank, parts: parallel?.size ?? 1,
                                     expertParts: exchange?.size ?? 1)
        expertCount = Self.expertCount(of: layout)
        let parameters = ParameterSet(layout: layout)
        self.parameters = parameters
        sharding = GPTStage.sharding(parameters, configuration, parallel: parallel, exchange: exchange)
        var stages: [Int: GPTStage] = [:]
        for s in schedule.stages(ofRank: group.rank) {
            stages[s] = GPTStage(configuration, layers: ranges[s], isFirst: s == 0, isLast: s == last,
                                 slots: Self.liveBound(schedule.actions[group.rank], stage: s), parameters: parameters, parallel: parallel,
                                 exchange: exchange)
        }
        self.stages = stages
        let firstRank = schedule.rank(ofStage: 0), lastRank = schedule.rank(ofStage: last)
        tiedPair = firstRank == lastRank ? nil : try group.subgroup(ranks: [firstRank, lastRank])
        sender = PipelineSender(group: group)
    }

    public static let splitBackwardRefusal =
        "zb-h1 splits each backward into input and weight passes, which tensor-parallel blocks do not: use 1f1b, gpipe or interleaved with tensor_parallel"

    deinit { sender.stop() }

    /// Most micro-batches of `stage` alive at once in `list` (a forward done, its backward not yet).
    static func liveBound(_ list: [PipelineAction], stage: Int) -> Int {
        var live = 0, peak = 0
        for a in list where a.stage == stage {
            if a.kind == .forward { live += 1; peak = max(peak, live) }
            if a.kind == .backward || a.kind == .backwardWeight { live -= 1 }
        }
        return max(peak, 1)
    }

    /// Draws the whole model from `seed` as one rank would and keeps this rank's tensors.
    public func initialize(seed: UInt64) { GPTStage.initialize(parameters, configuration, parallel: parallel, exchange: exchange, seed: seed) }

    /// Floats of one micro-batch's activation (or gradient) between stages: this rank's rows of the
    /// residual stream (1/tensor_parallel of them with sequence parallelism).
    func messageCount(_ batch: TokenBatch) -> Int {
        (parallel?.localRows(batch.batchSize * batch.time) ?? batch.batchSize * batch.time) * configuration.embedding
    }

    public func zeroGradients() { parameters.zeroGradients() }

    /// Frame tag of a message: kind, sending stage, micro-batch (the receiver checks it).
    static func tag(_ kind: PipelineAction.Kind, stage: Int, microbatch: Int) -> Int {
        (kind == .sendActivation || kind == .receiveActivation ? 0 : 1) << 19 | stage << 10 | microbatch
    }

    /// One step: forward and backward of every micro-batch (every rank passes the same list; the first
    /// stage reads its tokens, the last its targets). Gradients accumulate into the stages' parameters,
    /// scaled by 1/m, so they are the whole batch's mean-loss gradients; zero them before.
    public func run(_ microbatches: [TokenBatch], lossScale: Float = 1) throws -> StepReport {
        guard microbatches.count == schedule.microbatches else {
            throw LayoutError(key: "microbatches", "the schedule takes \(schedule.microbatches) micro-batches, the step got \(microbatches.count)")
        }
        let p = schedule.pipelineParallel
        let start = DispatchTime.now().uptimeNanoseconds
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var intervals: [PipelineInterval] = []
        var received: [PipelineAction: [Float]] = [:]   // keyed by the compute action that consumes it
        var local: [PipelineAction: [Float]] = [:]      // hand-offs between stages on this rank
        var slotOf: [PipelineAction: Int] = [:]         // (stage, micro-batch) forward → its slot
        var freeSlots = stages.mapValues { Array(0..<$0.slotCount) }
        var output: [PipelineAction: UnsafePointer<Float>] = [:]
        var lossSum: Float = 0, auxiliarySum: Float = 0, live = 0, peak = 0
        for a in schedule.actions[group.rank] {
            let s = a.stage, k = a.microbatch
            let count = a.kind == .step ? 0 : messageCount(microbatches[k])
            switch a.kind {
            case .receiveActivation, .receiveGradient:
                let activation = a.kind == .receiveActivation
                let from = activation ? s - 1 : s + 1
                var buffer = [Float](repeating: 0, count: count)
                let t0 = now()
                do {
                    try buffer.withUnsafeMutableBytes {
                        try Collectives.receive($0, from: from % p, tag: Self.tag(a.kind, stage: from, microbatch: k), group: group)
                    }
                } catch {
                    throw PipelineError(message: "stage \(s) receiving micro-batch \(k)'s \(activation ? "activation" : "gradient") from stage \(from) on pipeline rank \(from % p): \(error)")
                }
                intervals.append(PipelineInterval(action: a, start: t0, end: now()))
                received[PipelineAction(s, activation ? .forward : .backward, k)] = buffer // see the backward case
            case .forward:
                let stage = stages[s]!
                guard let slot = freeSlots[s]!.popLast() else { preconditionFailure("stage \(s) has no free slot for \(a)") }
                slotOf[a] = slot
                let input = received.removeValue(forKey: a) ?? local.removeValue(forKey: a)
                precondition(s == 0 || input != nil, "\(a) has no input")
                let t0 = now()
                var loss: Float = 0
                let out = try (input ?? []).withUnsafeBufferPointer { buffer in
                    try stage.forward(slot: slot, tokens: s == 0 ? microbatches[k].tokens : nil, input: s == 0 ? nil : buffer.baseAddress,
                                      targets: stage.isLast ? microbatches[k].targets : nil,
                                      batch: microbatches[k].batchSize, time: microbatches[k].time, loss: &loss)
                }
                intervals.append(PipelineInterval(action: a, start: t0, end: now()))
                live += 1; peak = max(peak, live)
                if stage.isLast { lossSum += loss }
                auxiliarySum += stage.auxiliaryLoss(slot: slot)
                if let out {
                    output[a] = out
                    if schedule.rank(ofStage: s + 1) == group.rank {
                        local[PipelineAction(s + 1, .forward, k)] = Array(UnsafeBufferPointer(start: out, count: count))
                    }
                }
            case .sendActivation:
                let out = output.removeValue(forKey: PipelineAction(s, .forward, k))!
                try sender.send(out, count: count, to: (s + 1) % p, tag: Self.tag(a.kind, stage: s, microbatch: k),
                                what: "stage \(s)'s activation of micro-batch \(k)")
            case .backward, .backwardInput:
                // Received and local gradients are keyed by the whole backward, which I stands for here.
                let key = PipelineAction(s, .backward, k)
                let stage = stages[s]!
                let gradient = received.removeValue(forKey: key) ?? local.removeValue(forKey: key)
                precondition(stage.isLast || gradient != nil, "\(a) has no output gradient")
                let forward = PipelineAction(s, .forward, k)
                let slot = a.kind == .backward ? slotOf.removeValue(forKey: forward)! : slotOf[forward]!
                let t0 = now()
                let scale = lossScale / Float(schedule.microbatches)
                let dInput = try (gradient ?? []).withUnsafeBufferPointer {
                    a.kind == .backward ? try stage.backward(slot: slot, outputGradient: stage.isLast ? nil : $0.baseAddress, lossScale: scale)
                                        : try stage.backwardInput(slot: slot, outputGradient: stage.isLast ? nil : $0.baseAddress, lossScale: scale)
                }
                intervals.append(PipelineInterval(action: a, start: t0, end: now()))
                if a.kind == .backward { freeSlots[s]!.append(slot); live -= 1 }
                output.removeValue(forKey: forward)
                if let dInput {
                    if schedule.rank(ofStage: s - 1) == group.rank {
                        local[PipelineAction(s - 1, .backward, k)] = Array(UnsafeBufferPointer(start: dInput, count: count))
                    } else {
                        // Sent right away (the next action): the pointer is valid until this slot's next backward.
                        output[key] = dInput
                    }
                }
            case .sendGradient:
                let dInput = output.removeValue(forKey: PipelineAction(s, .backward, k))!
                try sender.send(dInput, count: count, to: (s - 1) % p, tag: Self.tag(a.kind, stage: s, microbatch: k),
                                what: "stage \(s)'s input gradient of micro-batch \(k)")
            case .backwardWeight:
                let slot = slotOf.removeValue(forKey: PipelineAction(s, .forward, k))!
                let t0 = now()
                try stages[s]!.backwardWeight(slot: slot)
                intervals.append(PipelineInterval(action: a, start: t0, end: now()))
                freeSlots[s]!.append(slot)
                live -= 1
            case .step:
                let t0 = now()
                try sender.flush()
                if now() - t0 > 0 { intervals.append(PipelineInterval(action: a, start: t0, end: now())) }
            }
        }
        let holdsLast = stages[schedule.stageCount - 1] != nil
        return StepReport(loss: holdsLast ? lossSum / Float(schedule.microbatches) : nil, auxiliaryLoss: auxiliarySum / Float(schedule.microbatches),
                          intervals: intervals, peakLive: peak, seconds: now(), startNanoseconds: start)
    }

    /// Every pipeline rank's intervals of one step (each rank passes its own report of the same step),
    /// on one time axis from the earliest rank's start: the host's monotonic clock, exact for the ranks
    /// of one host (across hosts the clocks' offset shifts a row). Collective over the pipeline group.
    public func gatherIntervals(_ report: StepReport) throws -> [[PipelineInterval]] {
        let longest = schedule.actions.map(\.count).max() ?? 0
        var mine = [Int64(report.startNanoseconds)]
        for i in report.intervals {
            mine += [Int64(PipelineAction.Kind.allCases.firstIndex(of: i.action.kind)!), Int64(i.action.stage), Int64(i.action.microbatch),
                     Int64(i.start * 1e9), Int64(i.end * 1e9)]
        }
        mine += Array(repeating: -1, count: 1 + longest * 5 - mine.count)
        let all = try allgather(mine, group: group)
        let origin = all.map { $0[0] }.min() ?? 0
        return all.map { row in
            let shift = Double(row[0] - origin) / 1e9
            return stride(from: 1, to: row.count, by: 5).compactMap { i in
                guard row[i] >= 0 else { return nil }
                return PipelineInterval(action: PipelineAction(Int(row[i + 1]), PipelineAction.Kind.allCases[Int(row[i])], Int(row[i + 2])),
                                        start: Double(row[i + 3]) / 1e9 + shift, end: Double(row[i + 4]) / 1e9 + shift)
            }
        }
    }

    /// Forward only (evaluation): the mean loss over `batches`, on every rank of the pipeline group.
    /// Each batch goes through the stages in order; sends are asynchronous, so a rank holding two
    /// chunks waits for its second only after passing on its first.
    public func evaluate(_ batches: [TokenBatch]) throws -> Float {
        let p = schedule.pipelineParallel, last = schedule.stageCount - 1
        var total: Float = 0
        for (k, batch) in batches.enumerated() {
            let count = messageCount(batch)
            var carried: [Float] = []
            for s in schedule.stages(ofRank: group.rank) {
                let stage = stages[s]!
                if s > 0 && schedule.rank(ofStage: s - 1) != group.rank {
                    carried = [Float](repeating: 0, count: count)
                    try carried.withUnsafeMutableBytes {
                        try Collectives.receive($0, from: (s - 1) % p, tag: Self.tag(.receiveActivation, stage: s - 1, microbatch: k % 1024), group: group)
                    }
                }
                var loss: Float = 0
                let out = try carried.withUnsafeBufferPointer {
                    try stage.forward(slot: 0, tokens: s == 0 ? batch.tokens : nil, input: s == 0 ? nil : $0.baseAddress,
                                      targets: s == last ? batch.targets : nil, batch: batch.batchSize, time: batch.time, loss: &loss)
                }
                if s == last { total += loss }
                if let out {
                    if schedule.rank(ofStage: s + 1) == group.rank {
                        carried = Array(UnsafeBufferPointer(start: out, count: count))
                    } else {
                        try sender.send(out, count: count, to: (s + 1) % p, tag: Self.tag(.sendActivation, stage: s, microbatch: k % 1024),
                                        what: "stage \(s)'s evaluation activation \(k)")
                    }
                }
                stage.release(slot: 0)
            }
        }
        try sender.flush()
        var mean = [total / Float(max(batches.count, 1))]
        try mean.withUnsafeMutableBufferPointer { try allreduce($0, options: CollectiveOptions(), group: group) }
        return mean[0]
    }

    /// The tied embedding/head: the first stage's lookup gradient and the last stage's head gradient
    /// are two parts of one tensor's gradient. Their ranks sum them (both then apply the same update
    /// and stay equal); other ranks have nothing to do.
    public func sumTiedEmbeddingGradients() throws {
        guard let tiedPair else { return }
        let wte = (stages[0] ?? stages[schedule.stageCount - 1]!).parameters[GPTStage.tiedEmbedding].gradient
        try allreduce(UnsafeMutableBufferPointer(start: wte.data, count: wte.count), options: CollectiveOptions(), group: tiedPair)
    }
}
