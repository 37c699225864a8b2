import ArgumentParser
import Collectives
import Foundation
import NN
import Parallel
import Topology
import Rendezvous
import Support
import TestSupport
import Transport

/// One rank of a multi-process collective check (used by the tests; RANK, WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT and SWIFT_DDP_SECRET come from the environment). Exit 0: all checks passed; 1: a wrong
/// result; 3: a transport or rendezvous error (printed with the peer it names).
@main
struct CollectiveCheck: ParsableCommand {
    @Option(help: "Comma-separated algorithms: ring,tree,double-tree,halving-doubling,two-shot,auto.")
    var algorithms = "ring,tree,double-tree,halving-doubling,two-shot"

    @Option(help: "Comma-separated element counts.")
    var counts = "0,1,7,1000,1048579"

    @Option(help: "Wire format: none (float32) or bf16.")
    var compression = "none"

    @Flag(help: "Repeat one allreduce of the first count until killed (fault tests).")
    var loop = false

    @Flag(help: "Only allreduce (skip broadcast, allgather, reduce-scatter, barrier).")
    var allreduceOnly = false

    @Option(help: "Repeat the whole checked plan for this many seconds (soak), then report.")
    var soak: Double = 0

    @Flag(help: "Join, barrier, and have rank 0 print 'ready' (launch-latency benchmark).")
    var ready = false

    @Option(help: "What to check: collectives (on the world), groups (a --grid of sub-groups), p2p, alltoall (world sizes 1 and up), sub-group-loop (fault tests: allreduce forever on the row group), tensor-parallel / sequence-parallel (the GPT split over the world against one rank: forward, backward, finite differences; with a -moe suffix its blocks are mixtures of experts), or pipeline (the GPT's stages over the world, --schedule, --microbatches, --virtual-stages, against one rank over SGD steps).")
    var mode = "collectives"

    @Option(help: "Rows of the sub-group grid (mode groups): the world splits into rows x (world/rows).")
    var rows = 2

    @Option(help: "Mode pipeline: the schedule (gpipe, 1f1b, interleaved).")
    var schedule = "1f1b"

    @Option(help: "Mode pipeline: micro-batches per step.")
    var microbatches = 4

    @Option(help: "Mode pipeline: chunks per rank (interleaved).")
    var virtualStages = 1

    @Option(help: "Mode pipeline-bench: model width, layers, heads, sequence length, sequences per micro-batch, timed steps.")
    var benchModel = "128,4,4,64,2,20"

    @Option(help: "Mode pipeline-bench: write rank 0's view of the median step as an SVG timeline here.")
    var timeline: String?

    @Flag(help: "Print this rank's CPU affinity and memory policy, as seen from inside (sched_getaffinity, get_mempolicy).")
    var reportBinding = false
    @Flag(help: "Print which peers this rank reaches through shared memory and which over TCP, and whether the ranks share an arena.")
    var reportTransport = false

    func run() throws {
        try BuildCPU.requireRunnable()
        var plan = CollectiveCheckPlan()
        plan.algorithms = try algorithms.split(separator: ",").map {
            guard let a = AllreduceAlgorithm(rawValue: String($0)) else { throw ValidationError("unknown algorithm '\($0)'") }
            return a
        }
        plan.counts = try counts.split(separator: ",").map {
            guard let c = Int($0), c >= 0 else { throw ValidationError("bad count '\($0)'") }
            return c
        }
        guard let wire = WireFormat(rawValue: compression) else { throw ValidationError("--compression must be none or bf16") }
        plan.wire = wire
        plan.loop = loop
        plan.alsoOtherCollectives = !allreduceOnly
        let say: (String) -> Void = { line in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
        do {
            let env = try WorkerEnvironment.fromProcess()
            try prepareWorker(env)
            if reportBinding {
                let policy = currentMemoryPolicy()
                say("binding: rank \(env.rank) cpus \(compactList(currentAffinity())) mempolicy \(policy.mode) nodes \(compactList(policy.nodes))")
            }
            let group = try ProcessGroup.join(env, log: say)
            if reportTransport {
                let tcp = (0..<group.worldSize).filter { $0 != group.rank && !group.sharedMemoryPeers.contains($0) }
                say("transport: rank \(env.rank) shared memory [\(compactList(group.sharedMemoryPeers))] tcp [\(compactList(tcp))] arena \(group.arena == nil ? "no" : "yes")")
            }
            if ready {
                try barrier(group: group)
                if env.rank == 0 { say("ready") }
                return
            }
            switch mode {
            case "collectives": break
            case "tensor-parallel", "sequence-parallel", "tensor-parallel-moe", "sequence-parallel-moe":
                say("rank \(env.rank): OK \(try runTensorParallelCheck(world: group, sequenceParallel: mode.hasPrefix("sequence-parallel"), experts: mode.hasSuffix("-moe"), log: say)) checks")
                return
            case "pipeline":
                guard let kind = PipelineScheduleKind(rawValue: schedule) else { throw ValidationError("--schedule must be gpipe, 1f1b, interleaved or zb-h1, not '\(schedule)'") }
                say("rank \(env.rank): OK \(try runPipelineCheck(world: group, schedule: kind, microbatches: microbatches, virtualStages: virtualStages, log: say)) checks")
                return
            case "pipeline-bench":
                guard let kind = PipelineScheduleKind(rawValue: schedule) else { throw ValidationError("--schedule must be gpipe, 1f1b, interleaved or zb-h1, not '\(schedule)'") }
                let n = benchModel.split(separator: ",").compactMap { Int($0) }
                guard n.count == 6, n.allSatisfy({ $0 > 0 }) else { throw ValidationError("--bench-model is n_embd,n_layer,n_head,block_size,micro_batch,steps (positive integers), not '\(benchModel)'") }
                let configuration = GPTConfiguration(vocabularySize: 65, blockSize: n[3], layers: n[1], heads: n[2], embedding: n[0])
                let r = try runPipelineBench(world: group, schedule: kind, microbatches: microbatches, virtualStages: virtualStages,
                                             configuration: configuration, microBatchSize: n[4], steps: n[5], warmup: 3)
                if env.rank == 0 {
                    say(String(format: "pipeline-bench %@ p %d m %d v %d: step %.2f ms, predicted %.2f ms (measured/predicted %.2f), bubble measured %.3f, simulated %.3f, formula %.3f, peak live %@, peak RSS MiB %@; pass ms per stage %@",
                               kind.rawValue, group.worldSize, microbatches, virtualStages, r.stepSeconds * 1000, r.predictedSeconds * 1000,
                               r.stepSeconds / r.predictedSeconds, r.measuredBubble, r.simulatedBubble, r.formulaBubble, "\(r.peakLive)",
                               "\(r.peakRSSMiB.map { Int($0.rounded()) })", r.passSummary))
                    if let timeline {
                        try pipelineTimelineSVG(r.intervals, title: "\(kind.rawValue), p \(group.worldSize), m \(microbatches): measured median step")
                            .write(toFile: timeline, atomically: true, encoding: .utf8)
                    }
                }
                return
            case "groups":
                say("rank \(env.rank): OK \(try runSubgroupCheck(rows: rows, plan: plan, world: group, log: say)) checks")
                return
            case "p2p":
                say("rank \(env.rank): OK \(try runPointToPointCheck(world: group, log: say)) checks")
                return
            case "alltoall":
                say("rank \(env.rank): OK \(try runAllToAllCheck(group: group, seeds: [1, 2, 3], log: say)) checks")
                return
            case "sub-group-loop":
                let cols = group.worldSize / rows
                guard let row = try group.split(color: env.rank / cols, key: env.rank % cols) else { return }
                try row.attachArena()
                say("rank \(env.rank): row \(row.members), arena \(row.arena == nil ? "no" : "yes")")
                _ = try runCollectiveCheck(plan, group: row, log: say)
                return
            default: throw ValidationError("--mode must be collectives, groups, p2p, alltoall, sub-group-loop, tensor-parallel(-moe), sequence-parallel(-moe) or pipeline, not '\(mode)'")
            }
            if soak > 0 {
                // Every round checks every result; ranks agree on when to stop through one allreduce.
                let start = Date()
                var checks = 0, rounds = 0
                let stop = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1)
                defer { stop.deallocate() }
                repeat {
                    checks += try runCollectiveCheck(plan, group: group, log: { _ in })
                    rounds += 1
                    stop[0] = Date().timeIntervalSince(start) >= soak ? 1 : 0
                    try allreduce(stop, op: .max, group: group)
                } while stop[0] == 0
                say("rank \(env.rank): OK \(checks) checks in \(rounds) rounds over \(Int(Date().timeIntervalSince(start))) s")
                return
            }
            let checks = try runCollectiveCheck(plan, group: group, log: say)
            say("rank \(env.rank): OK \(checks) checks")
        } catch let failure as CheckFailure {
            say("WRONG: \(failure)")
            Foundation.exit(1)
        } catch {
            say("ERROR: \(error)")
            Foundation.exit(3)
        }
    }
}
