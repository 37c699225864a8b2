import Collectives
import Datasets
import FoundationEssentials
import Glibc
import NN
import Parallel
import Rendezvous
import Tensors

/// The GPT on Shakespeare split into pipeline stages: this rank holds its stages' tensors (one
/// parameter set) and runs its list of the schedule. A step's pipeline pass takes `microbatches`
/// micro-batches of batch_size sequences, drawn exactly as one rank with
/// grad_accum = microbatches × grad_accum would draw them, so the two train the same model. With
/// `parallel` each stage is split over a tensor-parallel group (Megatron's tensor × pipeline layout):
/// this rank holds its tensor rank's shard of its stages.
public final class PipelineGPTTask: TrainingTask {
    public let runner: PipelineRunner
    public let text: CharText
    let config: TrainConfig
    /// The data-parallel rank and size: the stages of one replica draw the same batches.
    let rank: Int, ranks: Int
    /// The full model's names and shapes, for checkpoints (which always hold the whole model).
    let full: GPT

    public init(config: TrainConfig, text: CharText, rank: Int, ranks: Int = 1, pipeline: ProcessGroup, parallel: TensorParallelism? = nil,
                exchange: ExpertExchange? = nil) throws {
        self.config = config
        self.text = text
        self.rank = rank
        self.ranks = ranks
        let configuration = GPTConfiguration(vocabularySize: text.vocabulary.count, blockSize: config.blockSize,
                                             layers: config.nLayer, heads: config.nHead, embedding: config.nEmbd, bias: config.bias,
                                             gelu: config.gelu, experts: config.experts)
        let schedule = try PipelineSchedule(config.pipelineSchedule, pipelineParallel: config.pipelineParallel,
                                            microbatches: config.microbatches, virtualStages: config.virtualStages)
        do {
            runner = try PipelineRunner(schedule: schedule, group: pipeline, configuration: configuration, parallel: parallel, exchange: exchange)
        } catch let error as LayoutError {
            throw ConfigError(key: error.key, error.reason)
        }
        full = GPT(configuration)
    }

    /// This rank's mixtures of block `layer`, one per activation slot of its stage (none elsewhere).
    public func mixtures(ofLayer layer: Int) -> [MixtureOfExperts] { runner.stages.values.flatMap { $0.mixtures(ofLayer: layer) } }

    public var parameters: ParameterSet { runner.parameters }
    public var expertCount: Int { runner.expertCount }
    /// The whole model's tensors (checkpoints hold them all); `runner.sharding` relates this rank's to them.
    public var sharding: ParameterSharding { full.sharding }
    var tensorParallel: Int { runner.parallel?.size ?? 1 }
    /// One pipeline pass: microbatches × batch_size sequences.
    public var unitsPerMicroBatch: Int { config.batchSize * config.blockSize * config.microbatches }
    public var unitName: String { "tokens" }
    /// This rank's share of a pass: its layers' part of the model's FLOPs (the head and embeddings
    /// counted with the first and last stage's ranks only in the model total).
    public var flopsPerMicroBatch: Double {
        runner.configuration.trainingFLOPs(batch: config.batchSize * config.microbatches, time: config.blockSize)
            / Double(config.pipelineParallel * tensorParallel)
    }

    public func initialize(seed: UInt64) { runner.initialize(seed: seed) }

    /// The micro-batches of pass `pass` at `iteration`: micro-step pass·m + k, as GPTTask draws them.
    func batches(iteration: Int, pass: Int) -> [TokenBatch] {
        (0..<config.microbatches).map { k in
            trainingWindows(text, config, rank: rank, ranks: ranks, iteration: iteration, microStep: pass * config.microbatches + k)
        }
    }

    /// One pipeline pass; returns its mean loss on every rank of the pipeline (gradients scaled by
    /// `lossScale`, accumulated): the last stage's cross-entropy plus every stage's mixtures' auxiliary
    /// losses, the training objective as one rank computes it.
    func runPass(iteration: Int, pass: Int, lossScale: Float) throws -> (loss: Float, report: PipelineRunner.StepReport) {
        let report = try runner.run(batches(iteration: iteration, pass: pass), lossScale: lossScale)
        var loss = [(report.loss ?? 0) + report.auxiliaryLoss]
        try loss.withUnsafeMutableBufferPointer { try allreduce($0, options: CollectiveOptions(), group: runner.group) }
        return (loss[0], report)
    }

    public func trainingLoss(iteration: Int, microStep: Int) throws -> Float {
        throw TrainingError("a pipeline-parallel task steps through whole pipeline passes, not single micro-batches")
    }

    public func backward(lossScale: Float, gradientsReady: (Int) -> Void) throws {
        throw TrainingError("a pipeline-parallel task steps through whole pipeline passes, not single micro-batches")
    }

    /// nanoGPT's estimate: eval_iters batches per split, the same batches as GPTTask draws, forward
    /// only through the stages; this replica takes its share, every rank of the pipeline gets the sums.
    public func evaluate(iteration: Int, part: Int, parts: Int) throws -> [EvaluationShare] {
        var results: [EvaluationShare] = []
        for (name, split) in [("train", text.train), ("val", text.validation)] {
            var evalRng = SeededRandom(seed: config.seed).derived(0xE7A1 &+ UInt64(iteration) &* 2 &+ (name == "val" ? 1 : 0))
            let batches = (0..<config.evalIters).map { _ in
                let (x, y) = CharText.sampleBatch(from: split, batchSize: config.batchSize, time: config.blockSize, using: &evalRng)
                return TokenBatch(tokens: x, targets: y, batchSize: config.batchSize, time: config.blockSize)
            }
            if runner.exchange != nil {
                // Every forward exchanges tokens over the expert group, whose ranks evaluate different
                // shares: each runs as many forwards, one batch at a time, a rank short of one dropping it.
                var sum = 0.0, count = 0.0
                for k in evaluationBatches(batches.count, part: part, parts: parts, evenly: true) {
                    let loss = Double(try runner.evaluate([batches[k ?? min(part, batches.count - 1)]]))
                    if k != nil { sum += loss; count += 1 }
                }
                results.append(EvaluationShare("\(name) loss", sum: sum, count: count))
                continue
            }
            let mine = evaluationBatches(batches.count, part: part, parts: parts, evenly: false).compactMap { $0 }.map { batches[$0] }
            let mean = mine.isEmpty ? 0 : Double(try runner.evaluate(mine))
            results.append(EvaluationShare("\(name) loss", sum: mean * Double(mine.count), count: Double(mine.count)))
        }
        return results
    }

    /// A full-model buffer (the checkpoint layout) from a buffer in this rank's layout, on the pipeline's
    /// rank 0 (tensor rank 0): the tensor-parallel group's rank 0 receives its group's shards one at a
    /// time and places them whole, then the pipeline's rank 0 receives each other stage's tensors straight
    /// into their places (the tied embedding from the first stage only). Only world rank 0 ends with more
    /// than one whole buffer; an allgather and an allreduce used to leave every rank a whole buffer, the
    /// group's shards and a ring segment of scratch. The others get a buffer back to discard.
    /// Collective over the tensor-parallel group `tensor` and, on its rank 0, the pipeline group.
    func fullModel(_ local: FloatBuffer, tensor: ProcessGroup?) throws -> FloatBuffer {
        let sharding = runner.sharding, whole = full.parameters
        let skipping: Set<String> = runner.stages[0] != nil ? [] : [GPTStage.tiedEmbedding]
        let tag = Trainer.assemblyTag
        guard let out = try Trainer.assembleOnRankZero(local, localCount: sharding.localCount, fullCount: whole.count, group: tensor, place: {
            sharding.assemble(piece: $0, rank: $1, layout: whole, into: $2, skipping: skipping)
        }) else { return local }
        let group = runner.group
        func bytes(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(start: out.base + range.lowerBound, count: 4 * range.count)
        }
        guard group.rank == 0 else {
            for range in try wholeRanges(ofPipelineRank: group.rank) { try send(UnsafeRawBufferPointer(bytes(range)), to: 0, tag: tag, group: group) }
            return out
        }
        for q in 1..<group.worldSize {
            for range in try wholeRanges(ofPipelineRank: q) { try receive(bytes(range), from: q, tag: tag, group: group) }
        }
        return out
    }

    /// Where pipeline rank `q`'s tensors lie in the whole model's buffer, adjacent ones merged (both ends
    /// of the assembly compute the same list). The tied embedding is the first stage's (pipeline rank 0).
    func wholeRanges(ofPipelineRank q: Int) throws -> [Range<Int>] {
        let names = try PipelineRunner.layout(schedule: runner.schedule, configuration: runner.configuration, rank: q).names
        var ranges: [Range<Int>] = []
        for range in names.filter({ q == 0 || $0 != GPTStage.tiedEmbedding }).map({ name -> Range<Int> in
            let p = full.parameters[name]
            return p.offset..<(p.offset + p.value.count)
        }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = ranges.last, last.upperBound == range.lowerBound { ranges[ranges.count - 1] = last.lowerBound..<range.upperBound }
            else { ranges.append(range) }
        }
        return ranges
    }

    /// Sum of squares of this rank's gradients inside `ranges` (ZeRO-1: the pieces it owns), the tied
    /// embedding counted on the first stage's rank only (its two copies hold the same summed gradient),
    /// replicated tensors on tensor (or expert) rank 0 only unless `replicatedEverywhere` (ZeRO under
    /// expert parallelism: the data-parallel pieces already count each once).
    func gradientSquares(in ranges: [Range<Int>], replicatedEverywhere: Bool = false) -> Double {
        let holdsFirst = runner.stages[0] != nil, rankZero = runner.sharding.rank == 0 || replicatedEverywhere
        var sum = 0.0
        for shard in runner.sharding.shards where (shard.local.name != GPTStage.tiedEmbedding || holdsFirst)
                                                  && (shard.kind != .replicated || rankZero) {
            let p = shard.local
            for range in ranges {
                let r = range.clamped(to: p.offset..<(p.offset + p.value.count))
                if !r.isEmpty { sum += sumOfSquares(runner.parameters.gradients.base + r.lowerBound, count: r.count) }
            }
        }
        return sum
    }

    /// This rank's tensors out of a full-model buffer (resume).
    func localize(_ fullBuffer: FloatBuffer, into local: FloatBuffer) {
        runner.sharding.scatter(whole: fullBuffer.base, layout: full.parameters, into: local.base)
    }
}
