import ArgumentParser
import Collectives
import Datasets
import FoundationEssentials
import Glibc
import Support
import Topology
import NN
import Parallel
import Rendezvous
import Tensors
import Training
import Transport

@main
struct DDPTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddp-train",
        abstract: "Train a model from a JSON config, or sample text from a GPT checkpoint.",
        subcommands: [Train.self, Sample.self, Consolidate.self, Plan.self, ConfigKeys.self, ShowEnvironment.self, ShowSchedule.self], defaultSubcommand: Train.self)

    /// nanoGPT's habit, `--max_iters=10` (or `--max-iters 10`), is read as `--set max_iters=10`.
    static func main() {
        do { try BuildCPU.requireRunnable() } catch { exit(withError: error) }
        fixAllocatorThresholds()
        var arguments = Array(CommandLine.arguments.dropFirst())
        // Only for training (the default subcommand): `sample` has options of its own, like --seed.
        if arguments.first == "train" || arguments.first?.hasSuffix(".json") == true { arguments = configKeyFlagsAsOverrides(arguments) }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}

/// Rewrites `--KEY=VALUE` and `--KEY VALUE`, where KEY (with - or _) is a config key and not one of the
/// trainer's own options, into `--set KEY=VALUE`.
func configKeyFlagsAsOverrides(_ arguments: [String]) -> [String] {
    let known = Set(TrainConfig.knownKeys), own: Set<String> = ["data_dir", "out_dir"]
    var out: [String] = [], i = 0
    while i < arguments.count {
        let argument = arguments[i]
        guard argument.hasPrefix("--"), argument != "--" else { out.append(argument); i += 1; continue }
        let body = argument.dropFirst(2)
        let name = String(body.prefix { $0 != "=" }.map { $0 == "-" ? "_" : $0 })
        guard known.contains(name), !own.contains(name) else { out.append(argument); i += 1; continue }
        if let eq = body.firstIndex(of: "=") {
            out += ["--set", "\(name)=\(body[body.index(after: eq)...])"]
        } else if i + 1 < arguments.count {
            out += ["--set", "\(name)=\(arguments[i + 1])"]
            i += 1
        } else {
            out.append(argument)
        }
        i += 1
    }
    return out
}

/// `ddp-train config`: every config key with its default and meaning.
struct ConfigKeys: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config",
                                                    abstract: "List every config key with its default and meaning.")
    func run() throws {
        print("# config keys (JSON in configs/*.json; override with --set KEY=VALUE or --KEY=VALUE): key = default  meaning")
        TrainConfig.reference().forEach { print($0) }
    }
}

/// Prints a library error as one line (no usage text: these are not command-line mistakes) and exits
/// 2 for bad input (config, data, checkpoint, environment) or 3 for a failure while running.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ConfigError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(2)
    } catch let error as DatasetError {
        emitLine("error: data: \(error.description) (scripts/get-data.sh fills the data directory)", to: STDERR_FILENO); throw ExitCode(2)
    } catch let error as CheckpointError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(2)
    } catch let error as EnvironmentError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(2)
    } catch let error as TransportError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(3)
    } catch let error as TrainingError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(3)
    } catch let error as CollectiveError {
        emitLine("error: \(error)", to: STDERR_FILENO); throw ExitCode(3)
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train the model a config describes.")

    @Argument(help: "Config file (configs/*.json).")
    var config: String

    @Option(name: .customLong("set"), help: "Override a config key: --set max_iters=100 (repeatable; --max_iters=100 works too). `ddp-train config` lists the keys.")
    var overrides: [String] = []

    @Option(help: "Data directory (overrides the config's data_dir).")
    var dataDir: String?

    @Option(help: "Output directory for checkpoints (overrides out_dir).")
    var outDir: String?

    @Flag(help: "Continue from <out_dir>/ckpt.safetensors.")
    var resume = false

    @Flag(help: "Under Slurm, mpirun or Kubernetes across hosts: start without a job secret (anyone who reaches the master port can join). Same as SWIFT_DDP_INSECURE=1.")
    var insecure = false

    func run() throws {
        if insecure { setenv("SWIFT_DDP_INSECURE", "1", 1) }
        try runReportingErrors {
            var extra = overrides
            if let dataDir { extra.append("data_dir=\"\(dataDir)\"") }
            if let outDir { extra.append("out_dir=\"\(outDir)\"") }
            var settings = try TrainConfig.load(path: config, overrides: extra)
            // SWIFT_DDP_TUNING gives auto a tuning table when the config names none (as for every program).
            let env = try WorkerEnvironment.fromProcess()
            if settings.allreduceTuning.isEmpty, let path = env.tuningPath { settings.allreduceTuning = path }
            try prepareWorker(env)
            // No spinning while training: the communication thread shares its rank's core with backward,
            // and every microsecond it spins is taken from compute (2 ranks, recipe, six alternating pairs on
            // a busy machine: 15.6k tokens/s mean blocking vs 14.0k spinning 50 us; blocking won 5 of 6).
            // SWIFT_DDP_SPIN_US overrides.
            let group = try ProcessGroup.join(env, spinMicroseconds: 0, log: { emitLine($0, to: STDERR_FILENO) })
            settings = try chooseLayout(settings, world: group, localRanks: env.localWorldSize, log: { emitLine($0) })
            let groups = try TrainingGroups(world: group, config: settings)
            let task = try makeTask(settings, rank: groups.data.rank, worldSize: groups.data.worldSize, parallel: groups.tensorParallelism,
                                    pipeline: groups.pipeline, exchange: groups.expert)
            let trainer = Trainer(config: settings, task: task, groups: groups, log: { emitLine($0) })
            trainer.jobID = env.jobID
            trainer.hostOversubscribed = env.oversubscribesHost
            // Rank 0 reads the checkpoint; the trainer hands its state to the other ranks.
            if resume && env.rank == 0 { try trainer.resume(from: trainer.checkpointPath) }
            if !resume { try trainer.resumeAfterRestart(restartCount: env.restartCount) }
            _ = try trainer.run()
        }
    }
}

struct ShowEnvironment: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "env",
        abstract: "Print which launcher started this rank (ours, torchrun, Slurm, Open MPI, MPICH/PMI, Kubernetes) and where each figure comes from.",
        discussion: "Try: srun -n 2 ddp-train env, mpirun -np 2 ddp-train env. Nothing is started or joined.")

    func run() throws {
        try runReportingErrors {
            let env = try WorkerEnvironment.fromProcess()
            for line in env.discovery.lines { print("rank \(env.rank): \(line)") }
            let cpu = CPUInfo.read()
            print("rank \(env.rank): cpu: \(cpu.modelName); build for \(BuildCPU.target) (\(BuildCPU.requiredFlags.joined(separator: " "))), "
                  + "GEMM micro-kernel \(GemmMicroKernel.native)")
            if env.worldSize > 1 {
                print("rank \(env.rank): rendezvous store: " + (env.discovery.rankZeroHostsStore ? "hosted by rank 0 on \(env.masterAddress):\(env.masterPort)" : "the launcher's, at \(env.masterAddress):\(env.masterPort)"))
                print("rank \(env.rank): job secret: \(env.secretSource)")
            }
        }
    }
}

struct ShowSchedule: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Print a pipeline schedule's actions per rank and simulate it: step time, bubble beside the formula, live activations.",
        discussion: """
        Actions use PyTorch's notation: 2F0 = stage 2 forward on micro-batch 0, B backward, I input gradient, W weight gradient,
        SEND_F/RECV_F activations, SEND_B/RECV_B gradients. Costs are per stage and per pass (any unit).
        Try: ddp-train schedule --pipeline-parallel 4 --microbatches 8 --schedule zb-h1 --svg zb.svg
        """)

    @Option(help: "gpipe, 1f1b, interleaved or zb-h1.")
    var schedule = "1f1b"
    @Option(help: "Pipeline ranks (p).")
    var pipelineParallel = 2
    @Option(help: "Micro-batches per step (m).")
    var microbatches = 4
    @Option(help: "Chunks per rank (v; interleaved only).")
    var virtualStages = 1
    @Option(help: "Cost of one stage's forward.")
    var forward = 1.0
    @Option(help: "Cost of one stage's input-gradient pass (a whole backward is input + weight).")
    var backwardInput = 1.0
    @Option(help: "Cost of one stage's weight-gradient pass.")
    var backwardWeight = 1.0
    @Option(help: "Time for one activation or gradient to reach the next stage.")
    var transfer = 0.0
    @Option(help: "Write the simulated timeline as SVG to this file.")
    var svg: String?
    @Flag(help: "Only the summary, not the action lists.")
    var quiet = false

    func run() throws {
        try runReportingErrors {
            guard let kind = PipelineScheduleKind(rawValue: schedule) else {
                throw LayoutError(key: "pipeline_schedule", "'\(schedule)' is not one of \(PipelineScheduleKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let plan = try PipelineSchedule(kind, pipelineParallel: pipelineParallel, microbatches: microbatches, virtualStages: virtualStages)
            for (name, value) in [("forward", forward), ("backward-input", backwardInput), ("backward-weight", backwardWeight), ("transfer", transfer)]
            where !(value >= 0 && value.isFinite) {
                throw LayoutError(key: name, "\(value) must be a finite cost >= 0")
            }
            let costs = PipelineCosts.uniform(stages: plan.stageCount, forward: forward, backwardInput: backwardInput,
                                              backwardWeight: backwardWeight, transfer: transfer)
            let sim = try PipelineSimulator.run(plan, costs: costs)
            if !quiet { print(plan.table) }
            let title = "\(kind.rawValue), p \(pipelineParallel), m \(microbatches)" + (virtualStages > 1 ? ", v \(virtualStages)" : "")
            print("\(title): step \(sim.stepTime), bubble \(format("%.3f", sim.bubble)) (formula \(format("%.3f", plan.formulaBubble)) at free communication\(kind == .zeroBubbleH1 ? " and F = I = W" : "")), peak live activations per rank \(sim.peakLiveActivations)")
            if let svg {
                try pipelineTimelineSVG(sim.intervals, title: title + ": simulated").write(toFile: svg, atomically: true, encoding: .utf8)
                print("timeline: \(svg)")
            }
        }
    }
}

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rank every layout of a world size by predicted step time, with its per-rank memory.",
        discussion: "Every data x tensor x pipeline (x expert) x ZeRO layout the trainer accepts at the config's global batch (batch_size x grad_accum, read as one rank's run), each with its training state per rank counted as the trainer allocates it, the activations this implementation keeps, rank 0's checkpoint assembly, and a step time predicted from each layout's model shards timed on this machine (as many at once as ranks share its cores), the collectives' alpha-beta costs (--tuning: tables from allreduce-bench, one per group size; --link-bandwidth, --link-latency), the pipeline bubble and, with more ranks than cores, the measured waits of blocking synchronizations and the lanes' communication stretched over the cores. Refused layouts are listed with the reason. scripts/bench-layouts.sh trains every layout and compares (docs/benchmarks.md).")

    @Argument(help: "The training config (JSON).")
    var config: String

    @Option(help: "The world size to plan for.")
    var world: Int

    @Option(help: "Memory per rank, bytes or with K, M, G (binary): layouts predicted above it are marked and ranked last.")
    var memoryPerRank: String?

    @Option(help: "A tuning table from allreduce-bench --tuning, repeatable (one per group size): its alpha-beta models price the collectives of groups of its world size, in place of the default ring model.")
    var tuning: [String] = []

    @Option(help: "Link bandwidth between ranks in GB/s for the collectives' cost (default 10: ranks of one host on shared memory; 0.125 for 1 gbit links).")
    var linkBandwidth: Double?

    @Option(help: "Per-message latency between ranks in microseconds (default 20: a blocking wake-up here).")
    var linkLatency: Double?

    @Option(help: "Ranks on each host (default: all on one): each maps a shared-memory lane to the others of its host (SWIFT_DDP_SHM_KB sets the ring, 0 none), counted in its memory.")
    var ranksPerHost: Int?

    @Option(name: .customLong("set"), help: "Override a config key: key=value (repeatable).")
    var overrides: [String] = []

    @Option(help: "Directory with the data files (the GPT's vocabulary is read from it).")
    var dataDir: String?

    @Option(help: "Also write the ranked layouts as JSON (settings to train each, predictions) to this file.")
    var json: String?

    func validate() throws {
        guard world >= 1 else { throw ValidationError("--world must be at least 1") }
        if let memoryPerRank, Self.bytes(memoryPerRank) == nil { throw ValidationError("--memory-per-rank: '\(memoryPerRank)' is not a size such as 2G, 512M or 1048576") }
        if let linkBandwidth, !(linkBandwidth > 0) { throw ValidationError("--link-bandwidth must be a positive number of GB/s") }
        if let linkLatency, !(linkLatency >= 0) { throw ValidationError("--link-latency must be a non-negative number of microseconds") }
        if let ranksPerHost, !(ranksPerHost >= 1 && world % ranksPerHost == 0) { throw ValidationError("--ranks-per-host must divide --world (\(world))") }
    }

    static func bytes(_ text: String) -> Double? {
        let units: [Character: Double] = ["K": 1024, "M": 1048576, "G": 1073741824]
        if let last = text.uppercased().last, let unit = units[last] { return Double(text.dropLast()).map { $0 * unit } }
        return Double(text)
    }

    func run() throws {
        try runReportingErrors {
            let settings = try TrainConfig.load(path: config, overrides: overrides + (dataDir.map { ["data_dir=\"\($0)\""] } ?? []))
            guard settings.model == .gpt else { throw ValidationError("plan: the planner lays out the gpt model (the mlp trains data-parallel)") }
            let text = try CharText(path: settings.dataset == .text ? settings.dataPath : settings.dataDir + "/tinyshakespeare.txt")
            var planner = LayoutPlanner(config: settings, worldSize: world, vocabularySize: text.vocabulary.count)
            try planner.useTuning(tables: tuning)
            if let linkBandwidth { planner.communication.bandwidth = linkBandwidth * 1e9 }
            if let linkLatency { planner.communication.alpha = linkLatency * 1e-6 }
            planner.refaultSecondsPerByte = LayoutPlanner.measureRefault()
            planner.ranksPerHost = ranksPerHost
            if let ring = try WorkerEnvironment.sharedMemoryRingBytes(ProcessInfo.processInfo.environment) { planner.laneRingBytes = ring }
            let budget = memoryPerRank.flatMap(Self.bytes)
            let copies = min(world, planner.cores)
            let plans = try planner.plan(compute: .measured(copies: copies), memoryPerRank: budget)
            print(format("plan: %@ on %d ranks (%d cores here), global batch %d sequences of %d; each layout's shards timed here, %d at once",
                         settings.architecture, world, planner.cores, planner.globalBatch, settings.blockSize, copies))
            for line in LayoutPlanner.table(plans, refused: planner.candidates().refused, memoryPerRank: budget) { print(line) }
            if let best = plans.first { print("plan: fastest predicted: \(best.name)" + (best.fits ? "" : " (but nothing fits the memory budget)")) }
            if let json {
                let rows: [JSONValue] = plans.map { p in
                    let c = p.config
                    return ["name": .string(p.name), "predicted_ms": JSONValue(p.predictedSeconds * 1000), "predicted_mib": JSONValue(p.predictedBytes / 1048576),
                            "state_bytes": JSONValue(p.stateBytes), "fits": .bool(p.fits),
                            "settings": JSONValue(["tensor_parallel=\(c.tensorParallel)", "sequence_parallel=\(c.sequenceParallel)",
                                         "pipeline_parallel=\(c.pipelineParallel)", "pipeline_schedule=\"\(c.pipelineSchedule.rawValue)\"",
                                         "microbatches=\(c.microbatches)", "virtual_stages=\(c.virtualStages)", "expert_parallel=\(c.expertParallel)",
                                         "zero_stage=\(c.zeroStage)", "batch_size=\(c.batchSize)", "grad_accum=\(c.gradAccum)"])]
                }
                try Data(JSONValue.array(rows).serialized(pretty: true).utf8).write(to: URL(fileURLWithPath: json))
                print("plan: wrote \(json)")
            }
        }
    }
}

struct Consolidate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a sharded checkpoint (checkpoint_format sharded) into the single safetensors file.",
        discussion: "The file holds the same tensors and metadata as a run with checkpoint_format single would have written: it resumes at any layout, samples, and loads in Python's safetensors.")

    @Argument(help: "The sharded checkpoint's directory (out_dir/ckpt.sharded).")
    var sharded: String

    @Argument(help: "The single file to write.")
    var output: String

    func run() throws {
        try runReportingErrors {
            guard ShardedCheckpoint.isSharded(sharded) else { throw CheckpointError(sharded, "is not a sharded checkpoint's directory") }
            let count = try ShardedCheckpoint.consolidate(sharded, into: output)
            print("consolidate: wrote \(output) (\(count) tensors) from \(sharded)")
        }
    }
}

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a GPT checkpoint.")

    @Argument(help: "Checkpoint written by training (out_dir/ckpt.safetensors).")
    var checkpoint: String

    @Option(help: "Prompt text (characters must be in the training vocabulary).")
    var prompt = "\n"

    @Option(help: "Characters to generate.")
    var tokens = 500

    @Option(help: "Softmax temperature (> 0).")
    var temperature: Float = 0.8

    @Option(help: "Keep only the k most likely characters (0 keeps all).")
    var topK = 200

    @Option(help: "Sampling seed.")
    var seed: UInt64 = 1337

    func validate() throws {
        guard temperature > 0 else { throw ValidationError("--temperature must be positive") }
        guard tokens >= 0 else { throw ValidationError("--tokens must not be negative") }
        guard topK >= 0 else { throw ValidationError("--top-k must not be negative") }
    }

    func run() throws {
        try runReportingErrors {
            let loaded = try LoadedCheckpoint(path: checkpoint)
            let settings = try TrainConfig.config(of: try loaded.require("config"), file: checkpoint + " (config)")
            guard settings.model == .gpt else { throw ValidationError("\(checkpoint) holds an \(settings.model) model; sampling needs a GPT") }
            // The vocabulary stored in the checkpoint (older checkpoints: read from the training data).
            let task: GPTTask
            if let vocabulary = loaded.metadata["vocabulary"] {
                task = GPTTask(config: settings, text: CharText(text: vocabulary))
            } else {
                guard let fromData = try makeTask(settings) as? GPTTask else { return }
                task = fromData
            }
            for p in task.parameters.parameters { try loaded.restore(p.name, shape: p.shape, into: p.value.data) }
            guard let start = task.text.encode(prompt) else { throw ValidationError("prompt has characters outside the vocabulary") }
            var rng = SeededRandom(seed: seed)
            let out = try task.model.generate(prompt: start, count: tokens, temperature: temperature,
                                          topK: topK == 0 ? nil : topK, using: &rng)
            print(task.text.decode(out))
        }
    }
}
