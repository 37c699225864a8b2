import Collectives
import Datasets
import FoundationEssentials
import Glibc
import Support
import Parallel
import Rendezvous

// `parallel: auto`: rank 0 times every layout's shards on this machine, plans every layout of the world
// (the same planner as `ddp-train plan`) and every rank trains its pick. Only rank 0 measures, so the ranks cannot
// pick differently from noisy timings; the pick travels as numbers over the world group before any
// other group is formed.

extension TrainConfig {
    /// The layout keys of a planned config, as numbers for a broadcast.
    var layoutNumbers: [Int64] {
        [tensorParallel, pipelineParallel, expertParallel, zeroStage, sequenceParallel ? 1 : 0, batchSize, gradAccum, microbatches,
         virtualStages, PipelineScheduleKind.allCases.firstIndex(of: pipelineSchedule)!].map(Int64.init)
    }

    /// This config with the layout keys of `numbers` (from `layoutNumbers`), laid out by hand from now on.
    func withLayout(_ numbers: [Int64]) -> TrainConfig {
        var c = self
        let n = numbers.map(Int.init)
        c.parallel = .manual
        c.tensorParallel = n[0]; c.pipelineParallel = n[1]; c.expertParallel = n[2]; c.zeroStage = n[3]; c.sequenceParallel = n[4] == 1
        c.batchSize = n[5]; c.gradAccum = n[6]; c.microbatches = n[7]; c.virtualStages = n[8]
        c.pipelineSchedule = PipelineScheduleKind.allCases[n[9]]
        return c
    }
}

/// The config every rank trains: `config` itself unless it says `parallel: auto`; then the planner's
/// fastest layout within the memory budget, chosen on world rank 0 and logged there with why.
/// Collective over `world` (every rank calls it before forming its groups).
public func chooseLayout(_ config: TrainConfig, world: ProcessGroup, localRanks: Int, log: (String) -> Void) throws -> TrainConfig {
    guard config.parallel == .auto else { return config }
    var numbers: [Int64] = []
    if world.rank == 0 {
        let ring = world.connections.lazy.compactMap { $0?.lane?.ringBytes }.first ?? 0
        let pick = try planLayout(config, worldSize: world.worldSize, localRanks: localRanks, laneRingBytes: ring, log: log)
        numbers = pick.layoutNumbers
    }
    if world.worldSize > 1 { numbers = try broadcast(world.rank == 0 ? numbers : Array(repeating: 0, count: config.layoutNumbers.count), root: 0, group: world) }
    return config.withLayout(numbers)
}

/// Rank 0's half of `chooseLayout`: plan, log the ranking and the reason, return the pick. A budget
/// nothing fits is a ConfigError naming memory_per_rank_mb and the smallest layout's need.
func planLayout(_ config: TrainConfig, worldSize: Int, localRanks: Int, laneRingBytes: Int,
                log: (String) -> Void) throws -> TrainConfig {
    let text = try CharText(path: config.dataset == .text ? config.dataPath : config.dataDir + "/tinyshakespeare.txt")
    var planner = LayoutPlanner(config: config, worldSize: worldSize, vocabularySize: text.vocabulary.count)
    try planner.useTuning(tables: [])
    let budgetSource = config.memoryPerRankMb > 0 ? "memory_per_rank_mb" : "physical memory / \(localRanks) rank(s) on this host"
    let budget = config.memoryPerRankMb > 0 ? config.memoryPerRankMb * 1048576 : Double(ProcessInfo.processInfo.physicalMemory) / Double(max(localRanks, 1))
    planner.refaultSecondsPerByte = LayoutPlanner.measureRefault()
    planner.ranksPerHost = localRanks
    planner.laneRingBytes = laneRingBytes
    let copies = min(worldSize, localRanks, planner.cores)
    let plans = try planner.plan(compute: .measured(copies: copies), memoryPerRank: budget)
    let refused = planner.candidates().refused
    log(format("parallel auto: %d layouts of %d ranks planned (%d refused) for a global batch of %d sequences, each layout's shards timed here (%d at once); budget %.0f MiB per rank (%@)",
               plans.count, worldSize, refused.count, planner.globalBatch, copies, budget / 1048576, budgetSource))
    for line in LayoutPlanner.table(Array(plans.prefix(5)), refused: [], memoryPerRank: budget) { log("parallel auto: " + line) }
    guard let best = plans.first, best.fits else {
        let smallest = plans.map(\.predictedBytes).min() ?? 0
        throw ConfigError(key: "memory_per_rank_mb", format("no layout of %d ranks fits %.0f MiB per rank (%@); the smallest needs %.0f MiB",
                                                            worldSize, budget / 1048576, budgetSource, smallest / 1048576))
    }
    var why = format("predicted %.2f ms/step (compute %.2f, communication %.2f, waits %.2f, bubble %.3f), %.0f MiB per rank",
                     best.predictedSeconds * 1000, best.computeSeconds * 1000, best.communicationSeconds * 1000, best.waitSeconds * 1000, best.bubble,
                     best.predictedBytes / 1048576)
    if let next = plans.dropFirst().first {
        why += format("; next %@ predicted %.2f ms (%.0f%% slower)%@", next.name, next.predictedSeconds * 1000,
                      100 * (next.predictedSeconds / best.predictedSeconds - 1), next.fits ? "" : ", over the budget")
    }
    if let faster = plans.filter({ !$0.fits }).min(by: { $0.predictedSeconds < $1.predictedSeconds }), faster.predictedSeconds < best.predictedSeconds {
        why += format("; %@ would be faster (%.2f ms) but needs %.0f MiB", faster.name, faster.predictedSeconds * 1000, faster.predictedBytes / 1048576)
    }
    log("parallel auto: training \(best.name): \(why)")
    return best.config
}
