import Collectives
import FoundationEssentials
import Glibc
import Support
import Tensors
import NN
import Parallel

/// A bad configuration, naming the key (and the file when there is one).
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let key: String
    public let problem: String
    public var file: String?
    public init(key: String, _ problem: String, file: String? = nil) { self.key = key; self.problem = problem; self.file = file }
    public var description: String {
        (file.map { "\($0): " } ?? "") + "config key '\(key)': \(problem)"
    }
}

/// One training run, decoded from configs/*.json. Keys are nanoGPT's names where nanoGPT has one.
/// Every key is optional (defaults below); unknown keys and invalid values are errors naming the key.
public struct TrainConfig: Codable, Sendable, Equatable {
    public enum ModelKind: String, Codable, Sendable { case gpt, mlp }
    public enum DatasetKind: String, Codable, Sendable { case shakespeare, mnist, text }
    public enum OptimizerKind: String, Codable, Sendable { case adamw, sgd }
    public enum Activation: String, Codable, Sendable { case relu, gelu }
    /// What a step with a non-finite gradient norm does: stop with an error (default) or skip the update.
    public enum NonFinitePolicy: String, Codable, Sendable { case stop, skip }
    public enum CheckpointFormat: String, Codable, Sendable { case single, sharded }
    /// manual: the layout keys say how to split the world; auto: the planner picks them.
    public enum ParallelMode: String, Codable, Sendable { case manual, auto }

    public var model: ModelKind = .gpt
    public var dataset: DatasetKind = .shakespeare
    public var dataDir: String = "data"
    /// dataset "text": any UTF-8 file, split 90/10 as nanoGPT's prepare.py does.
    public var dataPath: String = ""
    public var outDir: String = "runs/default"
    public var seed: UInt64 = 1337
    // GPT
    public var nLayer = 4, nHead = 4, nEmbd = 128, blockSize = 64
    public var dropout: Double = 0
    public var bias = false
    // MLP
    public var hidden = 256
    /// The GPT MLP's GELU: exact (nanoGPT's nn.GELU(), the default) or GPT-2's tanh approximation.
    public var gelu = GELUForm.exact
    public var activation: Activation = .relu
    // Batches and length
    public var batchSize = 12
    public var gradAccum = 1
    public var maxIters = 2000
    public var epochs: Int? = nil
    // Optimizer and schedule
    public var optimizer: OptimizerKind = .adamw
    public var learningRate: Double = 1e-3
    public var minLr: Double = 1e-4
    public var warmupIters = 100
    public var lrDecayIters = 2000
    public var decayLr = true
    public var beta1: Double = 0.9, beta2: Double = 0.99
    public var weightDecay: Double = 0.1
    public var momentum: Double = 0.9
    public var gradClip: Double = 1.0
    public var onNonfinite: NonFinitePolicy = .stop
    // Evaluation, logging, checkpoints
    public var evalInterval = 250
    public var evalIters = 20
    public var logInterval = 10
    public var checkpointInterval = 0
    /// single: one safetensors file (rank 0 gathers it); sharded: every rank writes its pieces.
    public var checkpointFormat = CheckpointFormat.single
    // Data parallelism
    public var allreduceAlgorithm = AllreduceAlgorithm.auto
    public var bucketMb: Double = 1.0
    public var verifyReplicas = false
    /// 1: ZeRO stage 1, optimizer state sharded across ranks (reduce-scatter, shard update, allgather).
    public var zeroStage = 0
    /// ZeRO-3: release a unit's gathered parameters after its forward (gather again for backward).
    public var reshardAfterForward = true
    /// bf16 ("bf16"): gradients travel as bfloat16 (ring), accumulated in float32; "none": float32.
    public var gradientCompression = WireFormat.float32
    /// A tuning table from allreduce-bench --tuning: `auto` then picks by its fitted alpha-beta model.
    public var allreduceTuning = ""
    // Model parallelism
    /// auto: rank 0 plans every layout of the world (LayoutPlanner) and all train its pick; batch_size x
    /// grad_accum is then the global batch, as one rank would train it.
    public var parallel = ParallelMode.manual
    /// With parallel auto: the memory budget per rank in MiB (0: physical memory / ranks on the host).
    public var memoryPerRankMb: Double = 0
    /// Megatron tensor parallelism: each block split across this many ranks (divides n_head); data
    /// parallelism is world / tensor_parallel.
    public var tensorParallel = 1
    /// LayerNorm and residual regions on 1/tensor_parallel of the rows (Korthikanti et al. 2022).
    public var sequenceParallel = false
    /// Pipeline parallelism: the GPT's blocks split into this many stages, one per rank of a
    /// pipeline group; data parallelism is world / pipeline_parallel.
    public var pipelineParallel = 1
    public var pipelineSchedule = PipelineScheduleKind.oneFOneB
    /// Micro-batches of batch_size sequences per pipeline pass (a step runs grad_accum passes).
    public var microbatches = 4
    /// Chunks of layers per rank (the interleaved schedule).
    public var virtualStages = 1
    /// An SVG of the last step's measured pipeline timeline, written by rank 0 (empty: none).
    public var pipelineTimeline = ""
    // Mixture of experts
    /// Experts per mixture-of-experts MLP (0: a dense model).
    public var nExperts = 0
    public var moeTopK = 1
    /// Places per expert = ceil(top_k x tokens / n_experts x factor), tokens of one rank's micro-batch; 0: dropless.
    public var capacityFactor: Double = 0
    /// Switch Transformer's load-balancing loss coefficient α.
    public var moeAuxLossCoef: Double = 0.01
    /// Every moe_every-th block's MLP is a mixture of experts.
    public var moeEvery = 1
    /// Experts split across this many data-parallel ranks (divides n_experts and the data-parallel size).
    public var expertParallel = 1

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case model, dataset, dataDir = "data_dir", dataPath = "data_path", outDir = "out_dir", seed
        case nLayer = "n_layer", nHead = "n_head", nEmbd = "n_embd", blockSize = "block_size", dropout, bias
        case hidden, activation, gelu
        case batchSize = "batch_size", gradAccum = "grad_accum", maxIters = "max_iters", epochs
        case optimizer, learningRate = "learning_rate", minLr = "min_lr", warmupIters = "warmup_iters"
        case lrDecayIters = "lr_decay_iters", decayLr = "decay_lr", beta1, beta2, weightDecay = "weight_decay"
        case momentum, gradClip = "grad_clip", onNonfinite = "on_nonfinite"
        case evalInterval = "eval_interval", evalIters = "eval_iters", logInterval = "log_interval"
        case checkpointInterval = "checkpoint_interval", checkpointFormat = "checkpoint_format"
        case allreduceAlgorithm = "allreduce_algorithm", bucketMb = "bucket_mb", verifyReplicas = "verify_replicas"
        case reshardAfterForward = "reshard_after_forward"
        case zeroStage = "zero_stage", gradientCompression = "gradient_compression", allreduceTuning = "allreduce_tuning"
        case parallel, memoryPerRankMb = "memory_per_rank_mb"
        case tensorParallel = "tensor_parallel", sequenceParallel = "sequence_parallel"
        case pipelineParallel = "pipeline_parallel", pipelineSchedule = "pipeline_schedule", microbatches, virtualStages = "virtual_stages"
        case pipelineTimeline = "pipeline_timeline"
        case nExperts = "n_experts", moeTopK = "moe_top_k", capacityFactor = "capacity_factor", moeAuxLossCoef = "moe_aux_loss_coef"
        case moeEvery = "moe_every", expertParallel = "expert_parallel"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func take<T: Decodable>(_ key: CodingKeys, _ into: inout T) throws {
            do {
                if let v = try c.decodeIfPresent(T.self, forKey: key) { into = v }
            } catch {
                throw ConfigError(key: key.rawValue, "expected \(Self.typeName(T.self))")
            }
        }
        try take(.model, &model); try take(.dataset, &dataset); try take(.dataDir, &dataDir); try take(.dataPath, &dataPath); try take(.outDir, &outDir)
        try take(.seed, &seed); try take(.nLayer, &nLayer); try take(.nHead, &nHead); try take(.nEmbd, &nEmbd)
        try take(.blockSize, &blockSize); try take(.dropout, &dropout); try take(.bias, &bias)
        try take(.hidden, &hidden); try take(.activation, &activation); try take(.gelu, &gelu)
        try take(.batchSize, &batchSize); try take(.gradAccum, &gradAccum); try take(.maxIters, &maxIters)
        if c.contains(.epochs), !(try c.decodeNil(forKey: .epochs)) { var e = 0; try take(.epochs, &e); epochs = e }
        try take(.optimizer, &optimizer); try take(.learningRate, &learningRate); try take(.minLr, &minLr)
        try take(.warmupIters, &warmupIters); try take(.lrDecayIters, &lrDecayIters); try take(.decayLr, &decayLr)
        try take(.beta1, &beta1); try take(.beta2, &beta2); try take(.weightDecay, &weightDecay)
        try take(.momentum, &momentum); try take(.gradClip, &gradClip); try take(.onNonfinite, &onNonfinite)
        try take(.evalInterval, &evalInterval); try take(.evalIters, &evalIters); try take(.logInterval, &logInterval)
        try take(.checkpointInterval, &checkpointInterval); try take(.checkpointFormat, &checkpointFormat)
        try take(.allreduceAlgorithm, &allreduceAlgorithm); try take(.bucketMb, &bucketMb); try take(.verifyReplicas, &verifyReplicas)
        try take(.reshardAfterForward, &reshardAfterForward)
        try take(.zeroStage, &zeroStage); try take(.gradientCompression, &gradientCompression)
        try take(.allreduceTuning, &allreduceTuning)
        try take(.parallel, &parallel); try take(.memoryPerRankMb, &memoryPerRankMb)
        try take(.tensorParallel, &tensorParallel); try take(.sequenceParallel, &sequenceParallel)
        try take(.pipelineParallel, &pipelineParallel); try take(.pipelineSchedule, &pipelineSchedule)
        try take(.microbatches, &microbatches); try take(.virtualStages, &virtualStages)
        try take(.pipelineTimeline, &pipelineTimeline)
        try take(.nExperts, &nExperts); try take(.moeTopK, &moeTopK); try take(.capacityFactor, &capacityFactor)
        try take(.moeAuxLossCoef, &moeAuxLossCoef); try take(.moeEvery, &moeEvery); try take(.expertParallel, &expertParallel)
    }

    static func typeName<T>(_ type: T.Type) -> String {
        switch type {
        case is ModelKind.Type: return "one of \(["gpt", "mlp"])"
        case is DatasetKind.Type: return "one of \(["shakespeare", "mnist", "text"])"
        case is OptimizerKind.Type: return "one of \(["adamw", "sgd"])"
        case is Activation.Type: return "one of \(["relu", "gelu"])"
        case is NonFinitePolicy.Type: return "one of \(["stop", "skip"])"
        case is CheckpointFormat.Type: return "one of \(["single", "sharded"])"
        case is ParallelMode.Type: return "one of \(["manual", "auto"])"
        case is GELUForm.Type: return "one of \(["exact", "tanh"])"
        case is AllreduceAlgorithm.Type: return "one of \(AllreduceAlgorithm.allCases.map(\.rawValue))"
        case is WireFormat.Type: return "one of \(WireFormat.allCases.map(\.rawValue))"
        case is PipelineScheduleKind.Type: return "one of \(PipelineScheduleKind.allCases.map(\.rawValue))"
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        default: return "a string"
        }
    }

    /// Decodes JSON after applying `overrides` ("key=value", value parsed as JSON, else taken as a string).
    /// Rejects unknown keys and invalid values with the key's name.
    public static func load(json: Data, overrides: [String] = [], file: String? = nil) throws -> TrainConfig {
        do {
            let parsed: JSONValue
            do { parsed = try JSONValue.parse(json) } catch let error as JSONError {
                // A config that says a thing twice is a mistake to show, not to guess.
                if let duplicate = error.duplicateKey { throw ConfigError(key: duplicate, "appears more than once") }
                throw ConfigError(key: "(file)", "not valid JSON: \(error)")
            }
            guard var object = parsed.objectValue else { throw ConfigError(key: "(top level)", "expected a JSON object") }
            var overridden: [String: String] = [:]
            for override in overrides {
                guard let eq = override.firstIndex(of: "="), eq != override.startIndex else {
                    throw ConfigError(key: override, "override must look like key=value")
                }
                let key = String(override[..<eq]), text = String(override[override.index(after: eq)...])
                object[key] = (try? JSONValue.parse(text)) ?? .string(text)
                overridden[key] = override
            }
            // null would silently mean the default; only epochs has "none" as a meaning.
            if let key = object.keys.sorted().first(where: { object[$0] == .null && $0 != CodingKeys.epochs.rawValue }) {
                throw ConfigError(key: key, "null is not a value (leave the key out for its default)")
            }
            let known = Set(CodingKeys.allCases.map(\.rawValue))
            if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
                let hint = suggestion(for: unknown).map { "did you mean '\($0)'? " } ?? ""
                throw ConfigError(key: unknown, "unknown key (\(hint)`ddp-train config` lists every key)")
            }
            let data = Data(JSONValue.object(object).serialized().utf8)
            do {
                let config = try JSONDecoder().decode(TrainConfig.self, from: data)
                try config.validate()
                return config
            } catch var error as ConfigError {
                // A bad value given on the command line is the flag's fault, not the file's.
                if let flag = overridden[error.key] { error.file = "--set \(flag)"; throw error }
                throw error
            }
        } catch var error as ConfigError {
            if error.file == nil || !(error.file!.hasPrefix("--set ")) { error.file = file }
            throw error
        } catch {
            throw ConfigError(key: "(file)", "not valid JSON: \(error)", file: file)
        }
    }

    /// Configs are small JSON files; anything else (a device, a FIFO, a directory, a huge file) is
    /// refused before it is read, so a wrong path cannot hang or exhaust the trainer.
    public static let maxConfigBytes = 1 << 20

    public static func load(path: String, overrides: [String] = []) throws -> TrainConfig {
        // stat follows a symlink: a linked config is fine, as long as what it points to is a small regular file.
        var info = stat()
        if stat(path, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFREG else {
                throw ConfigError(key: "(file)", "not a regular file", file: path)
            }
            if Int(info.st_size) > maxConfigBytes {
                throw ConfigError(key: "(file)", "is \(info.st_size) bytes; a config is at most \(maxConfigBytes)", file: path)
            }
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(key: "(file)", "cannot read config file", file: path)
        }
        return try load(json: data, overrides: overrides, file: path)
    }

    public func validate() throws {
        try require(batchSize >= 1, .batchSize, "must be at least 1, got \(batchSize)")
        try require(gradAccum >= 1, .gradAccum, "must be at least 1, got \(gradAccum)")
        try require(maxIters >= 0, .maxIters, "must not be negative, got \(maxIters)")
        try require((epochs ?? 1) >= 1, .epochs, "must be at least 1")
        try require(learningRate > 0 && learningRate.isFinite, .learningRate, "must be a positive number, got \(learningRate)")
        try require(minLr >= 0 && minLr <= learningRate, .minLr, "must be in 0...learning_rate, got \(minLr)")
        try require(warmupIters >= 0, .warmupIters, "must not be negative")
        try require(lrDecayIters >= warmupIters, .lrDecayIters, "must be at least warmup_iters (\(warmupIters))")
        try require(beta1 >= 0 && beta1 < 1, .beta1, "must be in [0, 1), got \(beta1)")
        try require(beta2 >= 0 && beta2 < 1, .beta2, "must be in [0, 1), got \(beta2)")
        try require(weightDecay >= 0, .weightDecay, "must not be negative")
        try require(momentum >= 0 && momentum < 1, .momentum, "must be in [0, 1), got \(momentum)")
        try require(gradClip >= 0, .gradClip, "must not be negative (0 disables clipping)")
        try require(evalInterval >= 1, .evalInterval, "must be at least 1")
        try require(evalIters >= 1, .evalIters, "must be at least 1")
        try require(logInterval >= 1, .logInterval, "must be at least 1")
        try require(checkpointInterval >= 0, .checkpointInterval, "must not be negative (0: only at the end)")
        try require([0, 1, 2, 3].contains(zeroStage), .zeroStage,
                    "must be 0 (off), 1 (optimizer state sharded), 2 (gradients too) or 3 (parameters too), got \(zeroStage)")
        try require(zeroStage < 3 || tensorParallel == 1, .zeroStage, "ZeRO-3 does not combine with tensor_parallel yet")
        try require(checkpointFormat == .single || (tensorParallel == 1 && pipelineParallel == 1), .checkpointFormat,
                    "sharded checkpoints are written by data-parallel ranks: not with tensor_parallel or pipeline_parallel yet")
        try require(gradientCompression == .float32 || [.ring, .auto].contains(allreduceAlgorithm), .gradientCompression,
                    "bf16 runs on the ring: set allreduce_algorithm to ring or auto (it is '\(allreduceAlgorithm.rawValue)')")
        try require(bucketMb > 0 && bucketMb <= 1024, .bucketMb, "must be in (0, 1024] MiB, got \(bucketMb)")
        try require(tensorParallel >= 1, .tensorParallel, "must be at least 1, got \(tensorParallel)")
        try require(model == .gpt || tensorParallel == 1, .tensorParallel, "applies to the gpt model only (the mlp trains data-parallel)")
        try require(!sequenceParallel || tensorParallel > 1, .sequenceParallel, "needs tensor_parallel > 1 (it splits the rows across the tensor-parallel group)")
        try require(pipelineParallel >= 1, .pipelineParallel, "must be at least 1, got \(pipelineParallel)")
        try require(pipelineTimeline.isEmpty || pipelineParallel > 1, .pipelineTimeline, "draws a pipeline: needs pipeline_parallel > 1")
        if pipelineParallel > 1 || virtualStages > 1 {
            try require(model == .gpt, .pipelineParallel, "applies to the gpt model only (the mlp trains data-parallel)")
            try require(tensorParallel == 1 || pipelineSchedule != .zeroBubbleH1, .pipelineSchedule,
                        PipelineRunner.splitBackwardRefusal)
            // As DeepSpeed: every micro-batch's backward accumulates into the whole gradient, so only
            // the optimizer state can be sharded across the data-parallel replicas.
            try require(zeroStage <= 1, .zeroStage,
                        "ZeRO-\(zeroStage) does not combine with pipeline_parallel (each micro-batch's backward adds to every gradient, so gradients and parameters cannot be sharded; ZeRO-1 can)")
            do {
                _ = try PipelineSchedule(pipelineSchedule, pipelineParallel: pipelineParallel, microbatches: microbatches, virtualStages: virtualStages)
                    .layerRanges(layers: nLayer)
            } catch let error as LayoutError {
                throw ConfigError(key: error.key, error.reason)
            }
        }
        try validateExperts()
        try require(memoryPerRankMb >= 0 && memoryPerRankMb.isFinite, .memoryPerRankMb, "must be a non-negative number of MiB (0: physical memory / ranks on the host)")
        if parallel == .auto {
            try require(model == .gpt, .parallel, "auto lays out the gpt model (the mlp trains data-parallel)")
            let chosen: [(CodingKeys, Bool)] = [(.tensorParallel, tensorParallel != 1), (.pipelineParallel, pipelineParallel != 1),
                                                (.expertParallel, expertParallel != 1), (.zeroStage, zeroStage != 0), (.sequenceParallel, sequenceParallel)]
            for (key, set) in chosen {
                try require(!set, .parallel, "auto chooses \(key.rawValue) itself: leave \(key.rawValue) out, or set parallel to manual")
            }
        }
        try require(dropout == 0, .dropout, "only 0 is supported (the recipe trains without dropout)")
        try requireMemory()
        // After the memory check, which bounds batch_size and block_size.
        try require(!sequenceParallel || (batchSize * blockSize) % tensorParallel == 0, .sequenceParallel,
                    "needs batch_size x block_size (\(batchSize * blockSize)) divisible by tensor_parallel \(tensorParallel)")
        switch model {
        case .gpt:
            try require(dataset == .shakespeare || dataset == .text, .dataset, "the gpt model trains on shakespeare or text")
            try require(dataset != .text || !dataPath.isEmpty, .dataPath, "dataset \"text\" needs data_path: a UTF-8 text file")
            try require(nLayer >= 1, .nLayer, "must be at least 1"); try require(nHead >= 1, .nHead, "must be at least 1")
            try require(nEmbd >= 1 && nEmbd % nHead == 0, .nEmbd, "must be a positive multiple of n_head (\(nHead)), got \(nEmbd)")
            try require(nHead % tensorParallel == 0, .tensorParallel, "\(tensorParallel) does not divide n_head \(nHead): attention is split by heads")
            try require(blockSize >= 1, .blockSize, "must be at least 1")
        case .mlp:
            try require(dataset == .mnist, .dataset, "the mlp model trains on mnist")
            try require(hidden >= 1, .hidden, "must be at least 1")
        }
    }

    /// A ConfigError naming `key` unless `ok`.
    func require(_ ok: Bool, _ key: CodingKeys, _ problem: @autoclosure () -> String) throws {
        if !ok { throw ConfigError(key: key.rawValue, problem()) }
    }

    /// The mixture-of-experts keys and the combinations they do not support yet.
    func validateExperts() throws {
        try require(nExperts == 0 || nExperts >= 2, .nExperts, "must be 0 (dense) or at least 2, got \(nExperts)")
        try require(expertParallel >= 1, .expertParallel, "must be at least 1, got \(expertParallel)")
        guard nExperts > 0 else {
            return try require(expertParallel == 1, .expertParallel, "needs a mixture of experts (n_experts > 0)")
        }
        try require(model == .gpt, .nExperts, "applies to the gpt model only")
        try require(nExperts <= 1024, .nExperts, "at most 1024, got \(nExperts)")
        try require([1, 2].contains(moeTopK), .moeTopK, "must be 1 (Switch) or 2 (GShard), got \(moeTopK)")
        try require(capacityFactor >= 0 && capacityFactor.isFinite, .capacityFactor, "must be a non-negative number (0: dropless), got \(capacityFactor)")
        try require(moeAuxLossCoef >= 0 && moeAuxLossCoef.isFinite, .moeAuxLossCoef, "must be a non-negative number, got \(moeAuxLossCoef)")
        try require(moeEvery >= 1 && moeEvery <= nLayer, .moeEvery, "must be in 1...n_layer (\(nLayer)), got \(moeEvery)")
        try require(nExperts % expertParallel == 0, .expertParallel, "\(expertParallel) does not divide n_experts \(nExperts)")
        try require(tensorParallel == 1 || expertParallel == 1, .expertParallel,
                    "does not combine with tensor_parallel (under tensor parallelism the tensor-parallel group splits the experts)")
        try require(nExperts % tensorParallel == 0, .tensorParallel, "\(tensorParallel) does not divide n_experts \(nExperts) (the tensor-parallel group splits the experts)")
        try require(pipelineParallel == 1 || pipelineSchedule != .zeroBubbleH1, .pipelineSchedule,
                    "zb-h1 splits each backward into input and weight passes, which mixture-of-experts blocks do not: use 1f1b, gpipe or interleaved")
    }

    /// The mixture-of-experts part of the GPT's configuration (nil: dense).
    public var experts: MoEConfiguration? {
        nExperts > 0 ? MoEConfiguration(experts: nExperts, topK: moeTopK, capacityFactor: capacityFactor,
                                        auxiliaryLossCoefficient: moeAuxLossCoef, every: moeEvery) : nil
    }

    /// Settings that must agree between a checkpoint and the run resuming it (the model's shape).
    public var architecture: String {
        // Experts are named only in a mixture-of-experts model, so older checkpoints still match; the
        // GELU form always (older checkpoints, written when tanh was the only or default form, name none:
        // `Self.architecture(of:)` reads them as tanh).
        model == .gpt ? "gpt n_layer=\(nLayer) n_head=\(nHead) n_embd=\(nEmbd) block_size=\(blockSize) bias=\(bias) gelu=\(gelu.rawValue)"
                          + (nExperts == 0 ? "" : " n_experts=\(nExperts) moe_top_k=\(moeTopK) moe_every=\(moeEvery)")
                      : "mlp hidden=\(hidden) activation=\(activation.rawValue)"
    }

    /// A checkpoint's architecture in today's form: before exact GELU became the default, a GPT named
    /// its GELU only when it was not tanh.
    public static func architecture(of stored: String) -> String {
        guard stored.hasPrefix("gpt "), !stored.contains(" gelu=") else { return stored }
        guard let bias = stored.firstMatch(of: /bias=(true|false)/) else { return stored }
        return String(stored[..<bias.range.upperBound]) + " gelu=tanh" + String(stored[bias.range.upperBound...])
    }

    /// A checkpoint's config in today's form: one written before the gelu key existed trained with tanh.
    public static func config(of stored: String, file: String? = nil) throws -> TrainConfig {
        var config = try load(json: Data(stored.utf8), file: file)
        if config.model == .gpt, !stored.contains("\"gelu\"") { config.gelu = .tanh }
        return config
    }

    /// One line of JSON, keys sorted (ranks compare it), paths as written ("data/x", not "data\/x").
    public func jsonString() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }
}

extension TrainConfig {
    /// Bytes of memory this config needs, estimated in floating point (so absurd sizes cannot overflow):
    /// parameters with their gradients and two optimizer buffers, and one micro-batch's activations.
    public func estimatedBytes(vocabulary: Double = 65) -> (parameters: Double, activations: Double) {
        let b = Double(batchSize)
        switch model {
        case .gpt:
            let c = Double(nEmbd), t = Double(blockSize), l = Double(nLayer), h = Double(nHead)
            let parameters = vocabulary * c + t * c + l * (12 * c * c + 13 * c) + 2 * c
            // Per layer nanoGPT keeps about 16 floats per token and channel (inputs of the norms,
            // projections, GELU, residuals) plus the attention matrix per head; then the logits.
            let activations = b * t * (l * (16 * c + 3 * h * t) + 2 * vocabulary + 4 * c)
            return (16 * parameters, 4 * activations)
        case .mlp:
            let hidden = Double(self.hidden)
            let parameters = 784 * hidden + hidden + hidden * 10 + 10
            return (16 * parameters, 4 * b * (784 + 3 * hidden + 30))
        }
    }

    /// Refuses, naming the key, a config whose estimate exceeds this machine's memory: the allocation
    /// would otherwise abort or overflow long after start.
    func requireMemory(physicalBytes: Double = Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))) throws {
        let (parameters, activations) = estimatedBytes()
        guard parameters + activations > physicalBytes else { return }
        func gib(_ x: Double) -> String { format(x < 1e6 * 1024 * 1024 * 1024 ? "%.1f GiB" : "%.2e GiB", x / 1073741824) }
        let key = parameters >= activations ? (model == .gpt ? CodingKeys.nEmbd : .hidden) : .batchSize
        let what = parameters >= activations ? "parameters, gradients and optimizer state" : "activations of one micro-batch"
        throw ConfigError(key: key.rawValue, "needs an estimated \(gib(parameters + activations)) (\(what) \(gib(max(parameters, activations)))), more than this machine's \(gib(physicalBytes))")
    }
}
