import Collectives
import Foundation
import NN
import Parallel
import Rendezvous
import TestSupport
import Training
import Transport
import XCTest

/// The layout planner: it lists what the trainer accepts and refuses the rest with the trainer's
/// reason, marks layouts over a memory budget, and its count of each rank's training state (parameters,
/// gradients, optimizer state) is the trainer's own, for every kind of layout.
final class PlannerTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }

    func planner(_ overrides: [String] = [], world: Int) throws -> LayoutPlanner {
        LayoutPlanner(config: try tinyGPTConfig(overrides, outDir: scratchDirectory("plan")), worldSize: world, vocabularySize: 65)
    }

    /// Resident bytes of an n-rank arena whose largest message is m bytes (under a slot): its header
    /// page, and in each of its two halves the rank's own slot up to m and 2m/n of each other slot.
    func residentArenaBytes(_ n: Int, _ m: Int) -> Double { n > 1 ? Double(4096 + 2 * (m + (n - 1) * 2 * m / n)) : 0 }

    func testRefusesWhatTheTrainerRefusesAndMarksTheBudget() throws {
        let plan = try planner(world: 4)
        let (accepted, refused) = plan.candidates()
        XCTAssertFalse(accepted.contains { $0.tensorParallel == 4 }, "tp 4 does not divide the tiny model's 2 heads")
        XCTAssertTrue(refused.contains { $0.name.hasPrefix("tp4") && $0.reason.contains("does not divide n_head 2") }, "\(refused)")
        XCTAssertTrue(refused.contains { $0.name.contains("pp2") && $0.name.hasSuffix("ZeRO-2") && $0.reason.contains("zero_stage") })
        XCTAssertTrue(accepted.contains { $0.tensorParallel == 2 && $0.sequenceParallel && $0.zeroStage == 1 })
        XCTAssertTrue(accepted.contains { $0.pipelineParallel == 2 && $0.zeroStage == 1 })
        XCTAssertTrue(accepted.contains { $0.pipelineParallel == 2 && $0.tensorParallel == 2 && $0.sequenceParallel })
        // Every layout trains the config's global batch (8 sequences): batch x micro-batches x replicas.
        for c in accepted {
            let dp = 4 / (c.tensorParallel * c.pipelineParallel)
            XCTAssertEqual(c.batchSize * (c.pipelineParallel > 1 ? c.microbatches : 1) * c.gradAccum * dp, 8, "\(c.architecture)")
        }
        let tight = try plan.plan(stepSeconds: 0.01, memoryPerRank: 1048576)
        XCTAssertFalse(tight.isEmpty)
        XCTAssertTrue(tight.allSatisfy { !$0.fits }, "nothing fits in 1 MiB per rank")
        let roomy = try plan.plan(stepSeconds: 0.01, memoryPerRank: 1073741824)
        XCTAssertTrue(roomy.allSatisfy(\.fits))
        XCTAssertEqual(roomy.map(\.predictedSeconds), roomy.map(\.predictedSeconds).sorted(), "ranked by predicted step time")
        // The MoE model adds expert layouts: ep 2 and ep 4 over the 4 data-parallel ranks.
        let moe = try planner(["n_experts=4", "moe_top_k=2"], world: 4).candidates().accepted
        XCTAssertEqual(Set(moe.map(\.expertParallel)), [1, 2, 4])
    }

    /// Each rank maps a lane to every other rank of its host, and the planner counts them in its memory:
    /// 4 ranks on one host, 3 lanes each, and the pages of the arenas (two 1 MiB slots per rank) the
    /// layout's reducing groups touch (dp 4: its gradient, under a slot, written into its own slot and a
    /// quarter of each other read twice, in both halves; a tensor or data group of 2 its own arena's
    /// pages alike; a pipeline group none); 2 per host, 1 lane and the arenas of the pairs that stay on a
    /// host; lanes off (SWIFT_DDP_SHM_KB=0), none.
    func testMemoryCountsTheSharedMemoryLanesOfTheHost() throws {
        var plan = try planner(world: 4)
        let segment = Double(SharedMemoryLane.segmentBytes(ringBytes: plan.laneRingBytes))
        let allLocal = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
        let dp4 = try XCTUnwrap(allLocal.first { $0.name == "dp4" })
        let stateBuffers = dp4.config.optimizer == .adamw ? 2 : (dp4.config.momentum > 0 ? 1 : 0)
        let gradient = dp4.stateBytes / (2 + stateBuffers)
        XCTAssertLessThan(gradient, plan.laneRingBytes, "the tiny model's gradient fits a slot")
        let arena = residentArenaBytes(4, gradient)
        XCTAssertEqual(dp4.laneBytes, 3 * segment + arena, accuracy: 1)
        func resident(_ n: Int, _ m: Int) -> Double { residentArenaBytes(n, min(m, plan.laneRingBytes)) }
        func tensorMessage(_ p: PlannedLayout) -> Int { 4 * p.config.batchSize * p.config.blockSize * p.config.nEmbd }
        for p in allLocal where p.config.zeroStage == 0 {
            XCTAssertEqual(p.laneBytes, 3 * segment + resident(p.dataParallel, p.stateBytes / (2 + stateBuffers))
                           + resident(p.config.tensorParallel, tensorMessage(p)), accuracy: 1, p.name)
        }
        XCTAssertTrue(allLocal.contains { $0.dataParallel == 2 && $0.config.tensorParallel == 2 })
        XCTAssertTrue(allLocal.contains { $0.dataParallel == 1 && $0.config.tensorParallel == 2 }, "tp 2 x pp 2: the tensor pair's arena, none for the pipeline")
        plan.ranksPerHost = 2
        let twoPerHost = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
        func twoPerHostLayout(_ name: String) throws -> PlannedLayout { try XCTUnwrap(twoPerHost.first { $0.name == name }, name) }
        let pairs = try twoPerHostLayout("pp2 1f1b m2 x dp2"), tensorPairs = try twoPerHostLayout("tp2 x dp2")
        XCTAssertEqual(pairs.laneBytes, segment + resident(2, pairs.stateBytes / (2 + stateBuffers)), accuracy: 1,
                       "stages across the hosts, each data pair within one: its arena")
        XCTAssertEqual(tensorPairs.laneBytes, segment + resident(2, tensorMessage(tensorPairs)), accuracy: 1,
                       "the tensor pair within a host, the data pair across")
        XCTAssertEqual(try twoPerHostLayout("dp4").laneBytes, segment, accuracy: 1, "dp 4 spans the hosts")
        plan.laneRingBytes = 0
        let off = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
        XCTAssertTrue(off.allSatisfy { $0.laneBytes == 0 })
        XCTAssertEqual(dp4.predictedBytes - off.first { $0.name == "dp4" }!.predictedBytes, 3 * segment + arena, accuracy: 1)
    }

    /// Groups on one host have arenas of their own (ParallelGroups): 6 ranks, tp 2 x dp 3 counts its
    /// tensor pairs' and data groups' arenas (the job's, unused, not) and prices ZeRO-1's reduce-scatter
    /// and allgather as one meeting each (half of two-shot's two); with 2 ranks per host its data groups
    /// span hosts (no arena) and its tensor pairs keep theirs.
    func testSubGroupArenasAreCountedAndPriced() throws {
        var plan = try planner(["zero_stage=1", "batch_size=12"], world: 6)
        let lanes = 5 * Double(SharedMemoryLane.segmentBytes(ringBytes: plan.laneRingBytes))
        let local = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
        let tp2 = try XCTUnwrap(local.first { $0.config.tensorParallel == 2 && $0.dataParallel == 3 && $0.config.pipelineParallel == 1 }, "\(local.map(\.name))")
        let dp6 = try XCTUnwrap(local.first { $0.name.hasPrefix("dp6") })
        func gradient(_ p: PlannedLayout) -> Int { p.stateBytes / 4 } // parameters, gradients and AdamW's two moments
        let activations = 4 * tp2.config.batchSize * tp2.config.blockSize * tp2.config.nEmbd // a block's output, summed by the pair
        XCTAssertEqual(tp2.laneBytes, lanes + residentArenaBytes(3, gradient(tp2)) + residentArenaBytes(2, activations), accuracy: 1,
                       "the data groups' and tensor pairs' own arenas")
        XCTAssertEqual(dp6.laneBytes, lanes + residentArenaBytes(6, gradient(dp6)), accuracy: 1, "the whole job's group uses the job's arena")
        let model = plan.communication
        XCTAssertEqual(model.half(bytes: 1 << 20, ranks: 3, sharedArena: true), model.allreduce(bytes: 1 << 20, ranks: 3, sharedArena: true) / 2,
                       accuracy: 1e-15)
        XCTAssertEqual(model.half(bytes: 1 << 20, ranks: 3) - model.half(bytes: 1 << 20, ranks: 3, sharedArena: true), model.alpha, accuracy: 1e-15,
                       "half a ring of 3 has 2 messages, the arena one meeting")
        XCTAssertEqual(model.half(bytes: 1 << 20, ranks: 2, sharedArena: true), model.half(bytes: 1 << 20, ranks: 2), accuracy: 1e-15,
                       "half a ring of 2 has one message, the arena one meeting")
        plan.ranksPerHost = 2
        let spread = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
        let tp2Spread = try XCTUnwrap(spread.first { $0.name == tp2.name })
        XCTAssertEqual(tp2Spread.laneBytes, Double(SharedMemoryLane.segmentBytes(ringBytes: plan.laneRingBytes)) + residentArenaBytes(2, activations),
                       accuracy: 1)
    }

    /// Under expert parallelism the expert-data-parallel group averages the experts' gradients through an
    /// arena of its own (ParallelGroups): ep 2 on 4 ranks, pairs carrying the experts' buckets beside the
    /// data group's 4-rank arena carrying the dense ones; ep 4 leaves groups of one (no arena); with the
    /// data group across hosts, neither.
    func testExpertDataGroupsArenasAreCounted() throws {
        var plan = try planner(["n_experts=4", "moe_top_k=2"], world: 4)
        var ep2 = plan.config
        ep2.expertParallel = 2
        let dense = 300_000, experts = 200_000 // bytes, under the 1 MiB slots and buckets
        XCTAssertEqual(plan.arenaBytes(ep2, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts),
                       residentArenaBytes(4, dense) + residentArenaBytes(2, experts), accuracy: 1)
        var ep4 = ep2
        ep4.expertParallel = 4
        XCTAssertEqual(plan.arenaBytes(ep4, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts),
                       residentArenaBytes(4, dense), accuracy: 1)
        plan.ranksPerHost = 2
        XCTAssertEqual(plan.arenaBytes(ep2, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts), 0)
    }

    /// More ranks on a host than cores: the lanes' copies share the cores, so every layout's
    /// communication takes ranks / cores times as long, and data parallelism's buckets no longer hide
    /// under backward (no core is idle to move them); ranks on hosts of their own (one per host) keep it.
    /// Buckets of 0.01 MiB and a long step make the tiny model's gradient many buckets, all but the
    /// last hidden on cores of their own.
    func testOversubscribedCommunicationStretchesOverTheCores() throws {
        var plan = try planner(["bucket_mb=0.01"], world: 4)
        // Lanes off, so no arena: the same algorithms run on one host and on four.
        plan.laneRingBytes = 0
        plan.cores = 4
        let ownCores = try plan.plan(stepSeconds: 1, memoryPerRank: nil)
        plan.cores = 2
        let shared = try plan.plan(stepSeconds: 1, memoryPerRank: nil)
        plan.ranksPerHost = 1
        let hosts = try plan.plan(stepSeconds: 1, memoryPerRank: nil)
        XCTAssertTrue(ownCores.contains { $0.communicationSeconds > 0 })
        for p in ownCores {
            let s = try XCTUnwrap(shared.first { $0.name == p.name }), h = try XCTUnwrap(hosts.first { $0.name == p.name })
            if p.dataParallel > 1 && p.config.pipelineParallel == 1 {
                XCTAssertGreaterThan(s.communicationSeconds, 2 * p.communicationSeconds + 1e-9, p.name)
            } else {
                XCTAssertEqual(s.communicationSeconds, 2 * p.communicationSeconds, accuracy: 1e-12, p.name)
            }
            XCTAssertEqual(h.communicationSeconds, p.communicationSeconds, accuracy: 1e-12, p.name)
        }
        // dp 4 shared: the whole gradient's allreduce, stretched, with nothing hidden.
        let dp4 = try XCTUnwrap(shared.first { $0.name == "dp4" })
        let stateBuffers = dp4.config.optimizer == .adamw ? 2 : (dp4.config.momentum > 0 ? 1 : 0)
        let gradientBytes = dp4.stateBytes / (2 + stateBuffers)
        XCTAssertEqual(dp4.communicationSeconds, 2 * plan.communication.allreduce(bytes: gradientBytes, ranks: 4), accuracy: 1e-12)
    }

    /// The trainer averages gradients after backward under expert parallelism (its all-to-alls run
    /// during backward) and hides the buckets under backward otherwise: a longer step hides more of a
    /// dense layout's data-parallel communication and none of an expert-parallel one's.
    func testExpertParallelBucketsDoNotHideUnderBackward() throws {
        var plan = try planner(["n_experts=4", "moe_top_k=2", "bucket_mb=0.01"], world: 4)
        plan.cores = 4
        let short = try plan.plan(stepSeconds: 1e-7, memoryPerRank: nil), long = try plan.plan(stepSeconds: 1, memoryPerRank: nil)
        let dp4 = try XCTUnwrap(long.first { $0.name == "dp4" }), shortDP4 = try XCTUnwrap(short.first { $0.name == "dp4" })
        XCTAssertLessThan(dp4.communicationSeconds, shortDP4.communicationSeconds)
        let expertLayouts = long.filter { $0.config.expertParallel > 1 && $0.dataParallel > 1 && $0.config.pipelineParallel == 1 }
        XCTAssertFalse(expertLayouts.isEmpty)
        for p in expertLayouts {
            let s = try XCTUnwrap(short.first { $0.name == p.name })
            XCTAssertEqual(p.communicationSeconds, s.communicationSeconds, accuracy: 1e-12, p.name)
        }
    }

    /// Under expert parallelism the experts' gradients are averaged over the expert-data-parallel group
    /// (dp / ep ranks) and the rest over the data group (DataParallel.group(of:)): ep 2 on 4 data-parallel
    /// ranks prices a 4-rank allreduce of the dense bytes and a 2-rank one of the experts', ep 4 (expert
    /// groups of one rank) the dense one alone, a dense layout all of its gradient over the data group.
    func testExpertGradientsArePricedOnTheirOwnGroup() throws {
        var plan = try planner(["n_experts=4", "moe_top_k=2"], world: 4)
        plan.laneRingBytes = 0
        plan.cores = 4
        let dense = 3_000_000, experts = 2_000_000, c = plan.communication
        var ep2 = plan.config, ep4 = plan.config, ep1 = plan.config
        ep2.expertParallel = 2
        ep4.expertParallel = 4
        ep1.expertParallel = 1
        XCTAssertEqual(plan.gradientCommunication(ep2, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts, compute: 1),
                       c.allreduce(bytes: dense, ranks: 4) + c.allreduce(bytes: experts, ranks: 2), accuracy: 1e-12)
        XCTAssertEqual(plan.gradientCommunication(ep4, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts, compute: 1),
                       c.allreduce(bytes: dense, ranks: 4), accuracy: 1e-12)
        XCTAssertEqual(plan.gradientCommunication(ep1, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: 0, compute: 0),
                       c.allreduce(bytes: dense + experts, ranks: 4), accuracy: 1e-12)
        // ZeRO-3 gathers and reduce-scatters the experts on their pairs too: three halves of each group's.
        ep2.zeroStage = 3
        XCTAssertEqual(plan.gradientCommunication(ep2, dataParallel: 4, gradientBytes: dense + experts, expertGradientBytes: experts, compute: 1),
                       3 * (c.half(bytes: dense, ranks: 4) + c.half(bytes: experts, ranks: 2)), accuracy: 1e-12)
    }

    /// On shared cores every all-to-all of a mixture is a meeting of the expert group, waited for as
    /// the tensor-parallel collectives are: 3 forward and 2 backward per mixture and micro-batch, each
    /// ep - 1 exchanges (4 ranks on 2 cores, MoE recipe: ep 4 predicted 33.9 ms a step where it measured
    /// 38-41 without them). A pipeline's are in its probe instead; ep 1 has none.
    func testExpertAllToAllsAreWaitedForOnSharedCores() throws {
        let plan = try planner(["n_experts=4", "moe_top_k=2"], world: 4)
        var calls: [(group: Int, steps: Int)] = []
        let penalty: (Int, Int, Double, Double) -> Double = { group, steps, _, _ in calls.append((group, steps)); return 1e-3 }
        func waits(_ ep: Int, pipeline: Int = 1) -> Double {
            var layout = plan.config
            layout.expertParallel = ep; layout.pipelineParallel = pipeline
            calls = []
            return plan.oversubscribedWaits(layout, dataParallel: 4 / pipeline, microbatches: 2, compute: 0.01, layers: 2,
                                            gradientBytes: 1 << 20, penalty: penalty)
        }
        let none = waits(1)
        XCTAssertFalse(calls.contains { $0.group == 4 && $0.steps == 3 })
        // The tiny GPT: 2 blocks, both mixtures; 2 micro-batches x 2 mixtures x 5 meetings.
        XCTAssertEqual(waits(4) - none, 2 * 2 * 5 * 1e-3, accuracy: 1e-12)
        XCTAssertTrue(calls.contains { $0.group == 4 && $0.steps == 3 })
        XCTAssertEqual(waits(2) - none, 2 * 2 * 5 * 1e-3, accuracy: 1e-12)
        XCTAssertEqual(waits(2, pipeline: 2), waits(1, pipeline: 2), accuracy: 1e-12, "a pipeline's all-to-alls are priced by its probe, not here")
    }

    /// A later pipeline stage is timed on inputs that differ from row to row, so its mixture's router
    /// spreads the tokens over the experts as in training: with one value in every row it sent them all
    /// to the same two experts and capacity dropped 3/8 of the choices, so the stage was timed on a
    /// fraction of its expert work (the MoE recipe's pp 4 predicted 30.7 ms a step, measured 39.7).
    func testPipelineStagesAreTimedOnTheirWholeExpertWork() throws {
        let plan = try planner(["n_experts=4", "moe_top_k=2", "capacity_factor=1.25"], world: 2)
        var layout = plan.config
        layout.pipelineParallel = 2
        let rows = layout.batchSize * layout.blockSize
        let tokens = (0..<rows).map { Int32($0 % 65) }
        let batch = TokenBatch(tokens: tokens, targets: tokens, batchSize: layout.batchSize, time: layout.blockSize)
        let shard = try plan.pipelineShard(layout, rank: 1, parallel: nil, batch: batch)
        try shard.pass()
        let mixtures = shard.stages.flatMap { stage in stage.layers.flatMap { stage.mixtures(ofLayer: $0) } }
        XCTAssertEqual(mixtures.count, 1)
        for mixture in mixtures {
            let statistics = mixture.statistics, choices = Double(2 * rows)
            XCTAssertEqual(statistics.routed.reduce(0, +), choices)
            XCTAssertEqual(statistics.routed.filter { $0 > 0 }.count, 4, "\(statistics.routed)")
            XCTAssertLessThan(statistics.dropped, choices / 8, "\(statistics.routed), dropped \(statistics.dropped)")
        }
    }

    /// Tuning tables price the collectives of groups of their size with the model of the algorithm the
    /// trainer runs there: 4 ranks on 2 cores, dp 4 by the 4-rank table as measured (its 4 ranks already
    /// shared the 2 cores), tp 2 x dp 2 by the 2-rank table stretched twice (two groups copy on the 2
    /// cores at once). The data-parallel group runs allreduce_algorithm, and with auto the config's own
    /// allreduce_tuning's choice; the other groups auto's fixed rule (ring here; two-shot, priced as the
    /// ring, for dp 4, the whole job on one host).
    func testTuningTablesPriceEachGroupSizesCollectives() throws {
        func table(_ n: Int, ring: Double, tree: Double) -> TuningTable {
            TuningTable(worldSize: n, models: ["ring": LinearCost(alpha: 0, beta: ring), "tree": LinearCost(alpha: 0, beta: tree),
                                               "halving-doubling": LinearCost(alpha: 0, beta: ring), "double-tree": LinearCost(alpha: 0, beta: ring),
                                               "two-shot": LinearCost(alpha: 0, beta: ring)])
        }
        let dir = scratchDirectory("tables")
        try table(2, ring: 2e-9, tree: 3e-9).write(to: dir + "/t2.json")
        try table(4, ring: 4e-9, tree: 1e-9).write(to: dir + "/t4.json")
        func communication(_ overrides: [String], tables: [String]) throws -> [String: (seconds: Double, gradientBytes: Double, activationBytes: Double)] {
            var plan = try planner(overrides, world: 4)
            plan.cores = 2
            try plan.useTuning(tables: tables.map { dir + "/" + $0 })
            return Dictionary(uniqueKeysWithValues: try plan.plan(stepSeconds: 1, memoryPerRank: nil).map { p in
                let stateBuffers = p.config.optimizer == .adamw ? 2 : (p.config.momentum > 0 ? 1 : 0)
                return (p.name, (p.communicationSeconds, Double(p.stateBytes / (2 + stateBuffers)),
                                 Double(4 * p.config.batchSize * p.config.blockSize * plan.config.nEmbd)))
            })
        }
        let layers = Double(try planner(world: 4).config.nLayer)
        let ring = try communication([], tables: ["t2.json", "t4.json"])
        let dp4 = try XCTUnwrap(ring["dp4"]), zero1 = try XCTUnwrap(ring["dp4 x ZeRO-1"]), tp2 = try XCTUnwrap(ring["tp2 x dp2"])
        XCTAssertEqual(dp4.seconds, 4e-9 * dp4.gradientBytes, accuracy: 1e-15)
        XCTAssertEqual(zero1.seconds, 4e-9 * dp4.gradientBytes, accuracy: 1e-15, "a reduce-scatter and an allgather: half a ring each")
        XCTAssertEqual(tp2.seconds, 2 * (layers * 4 * 2e-9 * tp2.activationBytes + 2e-9 * tp2.gradientBytes), accuracy: 1e-15)
        let tree = try communication(["allreduce_algorithm=\"tree\""], tables: ["t2.json", "t4.json"])
        XCTAssertEqual(try XCTUnwrap(tree["dp4"]).seconds, 1e-9 * dp4.gradientBytes, accuracy: 1e-15)
        XCTAssertEqual(try XCTUnwrap(tree["tp2 x dp2"]).seconds, 2 * (layers * 4 * 2e-9 * tp2.activationBytes + 3e-9 * tp2.gradientBytes),
                       accuracy: 1e-15, "tensor-parallel groups keep auto's fixed rule")
        let trainersTable = try communication(["allreduce_tuning=\"\(dir)/t4.json\""], tables: ["t2.json"])
        XCTAssertEqual(try XCTUnwrap(trainersTable["dp4"]).seconds, 1e-9 * dp4.gradientBytes, accuracy: 1e-15, "auto picks tree by the 4-rank table")
        XCTAssertEqual(try XCTUnwrap(trainersTable["tp2 x dp2"]).seconds, tp2.seconds, accuracy: 1e-15, "its 2-rank group keeps the fixed rule")
        let none = try communication([], tables: [])
        // Without tables: dp 4 (the whole job on one host) runs two-shot, two meetings where the ring has 6.
        let model = CommunicationModel()
        XCTAssertEqual(try XCTUnwrap(none["dp4"]).seconds, 2 * model.allreduce(bytes: Int(dp4.gradientBytes), ranks: 4, sharedArena: true), accuracy: 1e-15)
        XCTAssertEqual(model.allreduce(bytes: 1 << 20, ranks: 4, sharedArena: false) - model.allreduce(bytes: 1 << 20, ranks: 4, sharedArena: true),
                       4 * model.alpha, accuracy: 1e-15)
    }

    /// Two-shot runs only on a group that has the host's arena: the whole job, all on one host, lanes on.
    /// A 4-rank table in which it is the fastest prices dp 4 with it there; with the ranks on two hosts,
    /// or lanes off, by the table's best of the others (tree here), as the trainer's auto then picks.
    func testTwoShotIsPricedOnlyWhereTheArenaExists() throws {
        let dir = scratchDirectory("two-shot-tables")
        let others = ["ring": LinearCost(alpha: 0, beta: 4e-9), "tree": LinearCost(alpha: 0, beta: 3e-9)]
        try TuningTable(worldSize: 4, models: others.merging(["two-shot": LinearCost(alpha: 0, beta: 1e-9)]) { $1 }).write(to: dir + "/t4.json")
        try TuningTable(worldSize: 4, models: others).write(to: dir + "/others.json")
        func dp4(_ table: String, ranksPerHost: Int? = nil, laneRingBytes: Int = SharedMemorySetup.defaultRingBytes) throws -> Double {
            var plan = try planner(["allreduce_tuning=\"\(dir)/\(table)\""], world: 4)
            plan.cores = 2; plan.ranksPerHost = ranksPerHost; plan.laneRingBytes = laneRingBytes
            try plan.useTuning(tables: [])
            let p = try XCTUnwrap(try plan.plan(stepSeconds: 1, memoryPerRank: nil).first { $0.name == "dp4" })
            let stateBuffers = p.config.optimizer == .adamw ? 2 : (p.config.momentum > 0 ? 1 : 0)
            return p.communicationSeconds / Double(p.stateBytes / (2 + stateBuffers)) // seconds per gradient byte
        }
        XCTAssertEqual(try dp4("t4.json"), 1e-9, accuracy: 1e-15)
        XCTAssertEqual(try dp4("others.json"), 3e-9, accuracy: 1e-15)
        XCTAssertEqual(try dp4("t4.json", ranksPerHost: 2), try dp4("others.json", ranksPerHost: 2), accuracy: 1e-15)
        XCTAssertEqual(try dp4("t4.json", laneRingBytes: 0), try dp4("others.json", laneRingBytes: 0), accuracy: 1e-15)
        // The choice itself: auto skips two-shot without an arena, and two-shot by name runs auto's choice.
        let options = CollectiveOptions(tuning: try TuningTable.load(path: dir + "/t4.json"))
        XCTAssertEqual(options.algorithm(bytes: 1 << 20, worldSize: 4, sharedArena: true), .twoShot)
        XCTAssertEqual(options.algorithm(bytes: 1 << 20, worldSize: 4, sharedArena: false), .tree)
        var named = options
        named.algorithm = .twoShot
        XCTAssertEqual(named.algorithm(bytes: 1 << 20, worldSize: 4, sharedArena: true), .twoShot)
        XCTAssertEqual(named.algorithm(bytes: 1 << 20, worldSize: 4, sharedArena: false), .tree)
        XCTAssertEqual(named.algorithm(bytes: 1 << 20, worldSize: 2, sharedArena: false), .ring, "no table for 2 ranks: the fixed rule")
        // The fixed rule: two-shot for ranks that share an arena, else by size.
        let fixed = CollectiveOptions()
        XCTAssertEqual(fixed.algorithm(bytes: 4096, worldSize: 3, sharedArena: true), .twoShot)
        XCTAssertEqual(fixed.algorithm(bytes: 64 << 20, worldSize: 4, sharedArena: true), .twoShot)
        XCTAssertEqual(fixed.algorithm(bytes: 4096, worldSize: 2, sharedArena: true), .twoShot)
        XCTAssertEqual(fixed.algorithm(bytes: 1 << 20, worldSize: 2, sharedArena: true), .twoShot)
        XCTAssertEqual(fixed.algorithm(bytes: 4096, worldSize: 2, sharedArena: false), .halvingDoubling)
        XCTAssertEqual(fixed.algorithm(bytes: 1 << 20, worldSize: 2, sharedArena: false), .ring)
        XCTAssertEqual(fixed.algorithm(bytes: 4096, worldSize: 4, sharedArena: false), .halvingDoubling)
        XCTAssertEqual(fixed.algorithm(bytes: 1 << 20, worldSize: 4, sharedArena: false), .ring)
        // bf16 on the wire runs the compressed ring whatever auto would pick: priced as the ring.
        var plan = try planner(world: 4)
        try plan.useTuning(tables: [dir + "/t4.json"])
        let bf16 = CollectiveOptions(algorithm: .auto, wire: .bfloat16)
        XCTAssertEqual(plan.communication.allreduce(bytes: 1 << 20, ranks: 4, options: bf16, sharedArena: true), 4e-9 * Double(1 << 20), accuracy: 1e-15)
    }

    /// The synchronizations an oversubscribed step blocks on: data parallelism's buckets are averaged on
    /// the communication thread, so its compute thread waits once per step (for the last bucket), with
    /// all its compute before it; a tensor-parallel block waits at each of its collectives. On one host
    /// the steps have no wire time (shared memory); across hosts each step carries its share of the
    /// collective's alpha-beta time, which the probe sleeps out.
    func testOversubscribedWaitsCountTheComputeThreadsBlockingSynchronizations() throws {
        var plan = try planner(world: 4)
        var calls: [(group: Int, steps: Int, work: Double, wire: Double)] = []
        let record: (Int, Int, Double, Double) -> Double = { calls.append(($0, $1, $2, $3)); return 0.001 }
        let dp4 = try XCTUnwrap(plan.candidates().accepted.first { $0.tensorParallel == 1 && $0.pipelineParallel == 1 && $0.zeroStage == 0 })
        let dpWaits = plan.oversubscribedWaits(dp4, dataParallel: 4, microbatches: 1, compute: 0.012, layers: 2, gradientBytes: 4096,
                                               penalty: record)
        XCTAssertEqual(calls.count, 1)
        XCTAssertEqual(calls.first?.group, 4); XCTAssertEqual(calls.first?.steps, 6); XCTAssertEqual(calls.first?.work, 0.012)
        XCTAssertEqual(calls.first?.wire, 0)
        XCTAssertEqual(dpWaits, 0.001, accuracy: 1e-12)
        calls.removeAll()
        let tp2 = try XCTUnwrap(plan.candidates().accepted.first { $0.tensorParallel == 2 && !$0.sequenceParallel && $0.pipelineParallel == 1 && $0.zeroStage == 0 })
        let tpWaits = plan.oversubscribedWaits(tp2, dataParallel: 2, microbatches: 1, compute: 0.012, layers: 2, gradientBytes: 4096,
                                               penalty: record)
        // 2 layers x 4 collectives + 4 for the embedding and head, each after 1/12 of the compute; then the last bucket.
        XCTAssertEqual(calls.count, 2)
        XCTAssertEqual(calls[0].group, 2); XCTAssertEqual(calls[0].steps, 2); XCTAssertEqual(calls[0].work, 0.001, accuracy: 1e-12)
        XCTAssertEqual(calls[1].group, 2); XCTAssertEqual(calls[1].steps, 2)
        XCTAssertEqual(calls[0].wire, 0); XCTAssertEqual(calls[1].wire, 0)
        XCTAssertEqual(tpWaits, 12 * 0.001 + 0.001, accuracy: 1e-12)
        // 4 hosts of one rank on 1 gbit links: a tp 2 allreduce of the activations is two steps of half its time.
        plan.ranksPerHost = 1
        plan.communication.alpha = 60e-6; plan.communication.bandwidth = 0.125e9
        calls.removeAll()
        _ = plan.oversubscribedWaits(tp2, dataParallel: 2, microbatches: 1, compute: 0.012, layers: 2, gradientBytes: 4096, penalty: record)
        let activations = 4 * tp2.batchSize * tp2.blockSize * plan.config.nEmbd
        XCTAssertEqual(calls[0].wire, plan.communication.allreduce(bytes: activations, ranks: 2) / 2, accuracy: 1e-12)
        XCTAssertEqual(calls[1].wire, plan.communication.allreduce(bytes: 4096, ranks: 2) / 2, accuracy: 1e-12)
        XCTAssertGreaterThan(calls[0].wire, 60e-6)
    }

    /// A ring step's wire time is slept out after its peer sent: a tp 2 pair of 1F1B pipelines (2
    /// stages, 2 micro-batches) whose every pass stops twice for 2 ring steps of 5 ms each spends at least
    /// 4 passes x 2 x 2 x 5 ms = 80 ms per step in them, whatever the cores; and the sync probe's penalty
    /// (what is left beyond the compute and the wire time) stays finite and non-negative.
    func testProbesSleepOutEachRingStepsWireTime() throws {
        let schedule = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 2)
        let costs = PipelineCosts.uniform(stages: 2, forward: 1e-4, backwardInput: 1e-4, backwardWeight: 1e-4, transfer: 0)
        let step = PipelineProbe.stepTime(schedule, costs: costs, copies: 2, tensorParallel: 2, collectives: { _ in 2 }, ringSteps: 2,
                                          ringTransfer: 0.005, iterations: 2)
        XCTAssertGreaterThanOrEqual(step, 0.08)
        let wait = SyncProbe.penalty(world: 4, group: 2, steps: 1, work: 0.0005, transfer: 0.002, cores: 2)
        XCTAssertTrue(wait.isFinite && wait >= 0, "\(wait)")
    }

    /// A probed step's end waits as the trainer's does: two pipelines of 2 stages as a data-parallel pair,
    /// whose gradients' ring takes 2 steps and ZeRO-1's gather 1 more, each sleeping out 5 ms of wire
    /// time, spend at least 3 x 5 ms per step in them beyond the passes; the pipeline ring alone (tied
    /// embedding, norm) needs no wire and returns; the planner's step end for pp 2 x dp 2 is an
    /// allreduce's ring steps (or ZeRO-1's reduce-scatter and all-gather), a hand-off per piece of the
    /// ring's segments, with the tied sum and the norm.
    func testPipelineProbeWaitsForTheStepsEndSynchronizations() throws {
        let schedule = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 2)
        let costs = PipelineCosts.uniform(stages: 2, forward: 1e-4, backwardInput: 1e-4, backwardWeight: 1e-4, transfer: 0)
        let quiet = PipelineProbe.stepTime(schedule, costs: costs, copies: 2, iterations: 2)
        let end = PipelineStepEnd(pipelineSteps: 3, dataSteps: 2, gatherSteps: 1, dataWork: 0, dataTransfer: 0.005)
        let waited = PipelineProbe.stepTime(schedule, costs: costs, copies: 2, stepEnd: end, iterations: 2)
        XCTAssertGreaterThan(quiet, 0)
        XCTAssertGreaterThanOrEqual(waited, quiet + 0.015 * 0.9, "3 ring steps of 5 ms each")
        let alone = PipelineProbe.stepTime(schedule, costs: costs, copies: 1, stepEnd: PipelineStepEnd(pipelineSteps: 3), iterations: 2)
        XCTAssertGreaterThan(alone, 0)

        let plan = try planner(world: 4)
        var config = plan.config
        config.pipelineParallel = 2; config.microbatches = 2
        config.bucketMb = 1
        // 1 MiB of gradients, one bucket: each rank's segment of 128 Ki floats is 2 of the ring's pieces.
        XCTAssertEqual(ringPieceElements, 64 << 10)
        let plain = plan.pipelineStepEnd(config, dataParallel: 2, gradientBytes: 1 << 20)
        XCTAssertEqual([plain.pipelineSteps, plain.dataSteps, plain.gatherSteps], [3, 4, 0])
        XCTAssertGreaterThan(plain.dataWork, 0, "on one host the lanes' copying is work on the core")
        XCTAssertEqual(plain.dataTransfer, 0)
        config.zeroStage = 1
        let sharded = plan.pipelineStepEnd(config, dataParallel: 2, gradientBytes: 1 << 20)
        XCTAssertEqual([sharded.dataSteps, sharded.gatherSteps], [2, 2])
        // Two buckets (1 MiB and 0.5 MiB) over 4 ranks: 1 + 1 pieces per segment, 3 ring steps each.
        XCTAssertEqual(plan.pipelineStepEnd(config, dataParallel: 4, gradientBytes: 3 << 19).dataSteps, 6)
        XCTAssertEqual(plan.pipelineStepEnd(config, dataParallel: 1, gradientBytes: 1 << 20), PipelineStepEnd(pipelineSteps: 3))
    }

    /// The probe prices a synchronization only when ranks outnumber cores; then it runs its members (each
    /// streaming an L2's worth of memory between ring steps) and returns a finite, non-negative wait.
    func testSyncProbeMeasuresOnlyOversubscribedSynchronizations() {
        XCTAssertEqual(SyncProbe.penalty(world: 2, group: 2, steps: 1, work: 0.0005, cores: 2), 0)
        XCTAssertGreaterThan(SyncProbe.memoryBytes, 0)
        let wait = SyncProbe.penalty(world: 4, group: 2, steps: 1, work: 0.0005, cores: 2)
        XCTAssertTrue(wait.isFinite && wait >= 0, "\(wait)")
    }

    /// The pipeline probe runs each schedule's action lists with threads and pipes, one pipeline alone and
    /// two as a tensor-parallel pair whose passes stop for ring steps: it returns (a hand-off or ring step
    /// left unmatched would block it), and a step is never shorter than half of what the busiest rank
    /// computes (its arithmetic is calibrated to the costs on an idle core; half allows for a core that
    /// runs faster at test time). Copies the tensor-parallel size does not divide are refused with 0.
    func testPipelineProbeRunsEveryScheduleToItsEnd() throws {
        for (kind, v) in [(PipelineScheduleKind.gpipe, 1), (.oneFOneB, 1), (.interleaved, 2), (.zeroBubbleH1, 1)] {
            let schedule = try PipelineSchedule(kind, pipelineParallel: 2, microbatches: 4, virtualStages: v)
            let costs = PipelineCosts.uniform(stages: schedule.stageCount, forward: 2e-4, backwardInput: 2e-4, backwardWeight: 2e-4,
                                              transfer: 2e-5)
            let busiest = schedule.actions.map { list in
                list.reduce(0.0) { $0 + ($1.kind.isCompute && $1.kind != .step ? costs.cost($1) : 0) }
            }.max() ?? 0
            for (copies, tp) in [(1, 1), (2, 2)] {
                let step = PipelineProbe.stepTime(schedule, costs: costs, copies: copies, tensorParallel: tp, collectives: { _ in 2 },
                                                  ringSteps: 2, iterations: 2)
                XCTAssertTrue(step.isFinite && step >= busiest / 2, "\(kind) copies \(copies) tp \(tp): \(step) s against \(busiest) s of work")
            }
        }
        let schedule = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 2)
        XCTAssertEqual(PipelineProbe.stepTime(schedule, costs: .uniform(stages: 2), copies: 3, tensorParallel: 2), 0)
    }

    /// Timed compute: every layout of 4 ranks (tp, tp + sp, pp, tp × pp, ZeRO) gets its shards built
    /// and run here, each rank's time finite and positive; a pipeline is as busy as its busiest rank.
    func testEveryLayoutsShardsAreTimed() throws {
        let plan = try planner(["n_layer=4"], world: 4)
        let planned = try plan.plan(compute: .measured(copies: 1), memoryPerRank: nil)
        XCTAssertEqual(planned.count, plan.candidates().accepted.count)
        XCTAssertTrue(planned.contains { $0.config.tensorParallel == 2 && $0.config.pipelineParallel == 2 })
        for p in planned { XCTAssertTrue(p.computeSeconds.isFinite && p.computeSeconds > 0, "\(p.name): \(p.computeSeconds)") }
        let pp4 = try XCTUnwrap(plan.candidates().accepted.first { $0.pipelineParallel == 4 })
        let stages = try plan.timeShards(pp4, copies: 1)
        XCTAssertEqual(stages.count, 4)
        XCTAssertTrue(stages.allSatisfy { $0.forwardBackward > 0 && $0.update > 0 })
    }

    /// For layouts of every kind, the planner's bytes for world rank 0 equal the trainer's "memory:" line
    /// for it (4 real ranks each, no step taken).
    func testStateBytesEqualTheTrainersCount() throws {
        let cases: [(settings: [String], overrides: [String])] = [
            ([], []), (["zero_stage=1"], []), (["zero_stage=2"], []), (["zero_stage=3"], []),
            (["tensor_parallel=2", "zero_stage=1"], []), (["tensor_parallel=2", "sequence_parallel=true"], []),
            (["pipeline_parallel=2", "zero_stage=1"], []), (["pipeline_parallel=4"], ["n_layer=4"]),
            (["tensor_parallel=2", "pipeline_parallel=2", "sequence_parallel=true"], []),
            (["expert_parallel=2", "zero_stage=1"], ["n_experts=4"]), (["expert_parallel=4"], ["n_experts=4", "moe_every=2"]),
        ]
        for (settings, overrides) in cases {
            let plan = try planner(overrides, world: 4)
            let planned = try plan.plan(stepSeconds: 0.01, memoryPerRank: nil)
            let wanted = Dictionary(settings.map { ($0.split(separator: "=")[0], $0.split(separator: "=")[1]) }, uniquingKeysWith: { a, _ in a })
            guard let layout = planned.first(where: { p in
                let c = p.config
                return c.tensorParallel == Int(wanted["tensor_parallel"] ?? "1") && c.pipelineParallel == Int(wanted["pipeline_parallel"] ?? "1")
                    && c.expertParallel == Int(wanted["expert_parallel"] ?? "1") && c.zeroStage == Int(wanted["zero_stage"] ?? "0")
                    && c.sequenceParallel == (wanted["sequence_parallel"] == "true")
            }) else { XCTFail("\(settings) not planned"); continue }
            var args = ["--nproc-per-node", "4", "--timeout", "30", "--", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
                        "--out-dir", scratchDirectory("plan-check"), "--set", "max_iters=0", "--set", "batch_size=\(layout.config.batchSize)",
                        "--set", "microbatches=\(layout.config.microbatches)"]
            for s in overrides + settings { args += ["--set", s] }
            let run = try runToEnd(Self.buildDirectory + "/ddp-launch", args)
            XCTAssertEqual(run.status, 0, "\(settings):\n\(run.output)")
            let line = run.output.split(separator: "\n").first { $0.contains("] memory: ") && $0.contains("rank 0 holds") }.map(String.init) ?? ""
            let trainer = line.range(of: #"= (\d+) bytes"#, options: .regularExpression).map { Int(line[$0].dropFirst(2).dropLast(6))! }
            XCTAssertEqual(trainer, layout.stateBytes, "\(layout.name): trainer says \(line)")
        }
    }

    func testPlanCommandPrintsARankedTable() throws {
        let run = try runToEnd(Self.buildDirectory + "/ddp-train", ["plan", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
                                                                   "--world", "2", "--memory-per-rank", "2G"])
        XCTAssertEqual(run.status, 0, run.output)
        XCTAssertTrue(run.output.contains("| 1 | "), run.output)
        XCTAssertTrue(run.output.contains("plan: fastest predicted: "), run.output)
        let bad = try runToEnd(Self.buildDirectory + "/ddp-train", ["plan", configsDirectory + "/tiny-gpt.json", "--world", "2", "--memory-per-rank", "lots"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--memory-per-rank"), bad.output)
    }

    /// `parallel: auto` on 4 real ranks: rank 0 logs the ranking and why, every rank trains the named
    /// pick (the config line shows its keys, laid out by hand), and it trains the global batch exactly as
    /// the same layout set by hand does. Layout keys beside auto and a budget nothing fits are refused.
    func testParallelAutoTrainsThePlannersPick() throws {
        let common = ["--set", "n_layer=4", "--set", "batch_size=16", "--set", "max_iters=6", "--set", "log_interval=1",
                      "--set", "eval_interval=1000", "--set", "checkpoint_interval=0"]
        let dir = scratchDirectory("auto")
        let auto = try launchTinyGPT(4, common + ["--set", "parallel=auto", "--out-dir", dir])
        XCTAssertEqual(auto.status, 0, auto.output)
        guard let line = auto.output.split(separator: "\n").first(where: { $0.contains("parallel auto: training ") }),
              let configLine = auto.output.split(separator: "\n").first(where: { $0.contains("] config: {") }) else {
            return XCTFail("no pick or config logged:\n\(auto.output)")
        }
        XCTAssertTrue(line.contains("predicted") && line.contains("MiB per rank"), String(line))
        XCTAssertTrue(auto.output.contains("parallel auto: | 1 | "), "the ranking is logged:\n\(auto.output)")
        let trained = try TrainConfig.load(json: Data(configLine[configLine.range(of: "{")!.lowerBound...].utf8))
        XCTAssertEqual(trained.parallel, .manual)
        XCTAssertTrue(configLine.contains("\"out_dir\":\"\(dir)\""), "paths logged as written, slashes unescaped: \(configLine)")
        let name = line.components(separatedBy: "parallel auto: training ")[1].components(separatedBy: ":")[0]
        XCTAssertEqual(name.contains("tp2"), trained.tensorParallel == 2, name)
        XCTAssertEqual(name.contains("pp"), trained.pipelineParallel > 1, name)
        XCTAssertEqual(name.contains("ZeRO"), trained.zeroStage > 0, name)
        // The same layout by hand trains the same losses.
        let keys = ["tensor_parallel=\(trained.tensorParallel)", "pipeline_parallel=\(trained.pipelineParallel)", "zero_stage=\(trained.zeroStage)",
                    "sequence_parallel=\(trained.sequenceParallel)", "batch_size=\(trained.batchSize)", "grad_accum=\(trained.gradAccum)",
                    "microbatches=\(trained.microbatches)", "pipeline_schedule=\(trained.pipelineSchedule.rawValue)"]
        let byHand = scratchDirectory("auto-by-hand")
        let manual = try launchTinyGPT(4, common + keys.flatMap { ["--set", $0] } + ["--out-dir", byHand])
        XCTAssertEqual(manual.status, 0, manual.output)
        XCTAssertEqual(try metricsLosses(dir), try metricsLosses(byHand))
        for (extra, key) in [(["--set", "tensor_parallel=2"], "parallel"), (["--set", "memory_per_rank_mb=1"], "memory_per_rank_mb")] {
            let refused = try launchTinyGPT(2, common + ["--set", "parallel=auto"] + extra + ["--out-dir", scratchDirectory("auto-bad")])
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.output.contains(key), refused.output)
        }
    }
}
