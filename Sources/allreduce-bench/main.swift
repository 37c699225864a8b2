import ArgumentParser
import Bench
import Collectives
import Foundation
import Launch
import Rendezvous
import Transport

/// Allreduce benchmark, one process per rank (start it with scripts/bench-allreduce.sh or ddp-launch).
/// Flags follow nccl-tests: -b min bytes, -e max bytes, -f factor, -n iterations, -w warm-up, -c check.
@main
struct AllreduceBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "allreduce-bench",
                                                    abstract: "nccl-tests-style allreduce sweep over our algorithms.")
    @Option(name: .customShort("b"), help: "Smallest message in bytes (K/M suffixes allowed).") var minBytes = "4K"
    @Option(name: .customShort("e"), help: "Largest message in bytes.") var maxBytes = "64M"
    @Option(name: .customShort("f"), help: "Size factor between steps.") var factor = 4
    @Option(name: .customShort("n"), help: "Timed iterations (fewer for large messages).") var iterations = 100
    @Option(name: .customShort("w"), help: "Warm-up iterations.") var warmup = 5
    @Option(name: .customShort("c"), help: "Check results: 1 or 0.") var check = 1
    @Option(name: .customShort("t"), help: "Timed trials per size and algorithm, interleaved; the median is reported.") var trials = 5
    @Option(help: "Comma-separated: ring,tree,halving-doubling,auto (auto runs last, with the model fitted to the others).")
    var algorithms = "ring,tree,halving-doubling,auto"
    @Option(help: "Write results as JSON to this file (rank 0).") var json: String?
    @Option(help: "Draw busbw and time against size, per algorithm, into this SVG file (rank 0).") var plot: String?
    @Option(help: "What to time: allreduce, or sendrecv (ring shift), pingpong (ranks 0 and 1; one-way time) or alltoall.")
    var collective = "allreduce"
    @Option(help: "Run on a sub-group of the first K ranks (the others leave at once): what a sub-group costs next to a world of K.")
    var subgroup: Int?
    @Option(help: "Write the fitted alpha-beta table here (rank 0); SWIFT_DDP_TUNING or allreduce_tuning loads it.") var tuning: String?

    func validate() throws {
        guard let lo = parseBytes(minBytes), lo >= 4 else { throw ValidationError("-b must be at least 4 bytes, not '\(minBytes)'") }
        guard let hi = parseBytes(maxBytes), hi >= lo else { throw ValidationError("-e must be at least -b, not '\(maxBytes)'") }
        guard factor >= 2 else { throw ValidationError("-f must be at least 2") }
        guard iterations >= 1, warmup >= 0, trials >= 1 else { throw ValidationError("-n and -t must be >= 1 and -w >= 0") }
        guard collective == "allreduce" || MessagePattern(rawValue: collective) != nil else {
            throw ValidationError("--collective must be allreduce, sendrecv, pingpong or alltoall, not '\(collective)'")
        }
        if let subgroup { guard subgroup >= 1 else { throw ValidationError("--subgroup must be at least 1") } }
        for a in algorithms.split(separator: ",") where AllreduceAlgorithm(rawValue: String(a)) == nil {
            throw ValidationError("unknown algorithm '\(a)'")
        }
    }

    func run() throws {
        try prepareWorker()
        let env = try DistributedEnvironment.fromProcess()
        let world = try ProcessGroup.join(env)
        var group = world
        if let subgroup {
            guard subgroup <= world.worldSize else { throw ValidationError("--subgroup \(subgroup) exceeds the world of \(world.worldSize)") }
            guard let sub = try world.subgroup(ranks: Array(0..<subgroup)) else { return }
            group = sub
        }
        let sizes = geometricSizes(minimum: parseBytes(minBytes)!, maximum: parseBytes(maxBytes)!, factor: factor)
        if let pattern = MessagePattern(rawValue: collective) {
            let results = try runMessageSweep(pattern, sizes: sizes, iterations: iterations, warmup: warmup, trials: trials,
                                              check: check != 0, group: group)
            if group.rank == 0 {
                let title = ["sendrecv": "sendrecv (ring shift, batched), float32", "pingpong": "pingpong (ranks 0 and 1; one-way time = round trip / 2), float32",
                             "alltoall": "alltoall (pairwise exchange), float32"][collective]!
                print(formatTable(results, ranks: group.worldSize, title: title, redop: "none"))
                if let json { try writeJSON(results, to: json) }
                let wrong = results.reduce(0) { $0 + $1.wrong }
                print("# out of bounds values: \(wrong) \(wrong == 0 ? "OK" : "FAILED")")
                if wrong > 0 { throw ExitCode(1) }
            }
            return
        }
        let chosen = algorithms.split(separator: ",").map { AllreduceAlgorithm(rawValue: String($0))! }
        let measured = chosen.filter { $0 != .auto }
        var results = try runSweep(SweepPlan(sizes: sizes, algorithms: measured, iterations: iterations, warmup: warmup, check: check != 0,
                                             trials: trials), group: group)
        // Every rank has the same results (slowest rank's times), so every rank fits the same table.
        let table = fitTuningTable(results, worldSize: group.worldSize, reductionSecondsPerByte: measureReductionSecondsPerByte(),
                                   measuredOn: "\(group.worldSize) ranks, \(ProcessInfo.processInfo.hostName)")
        var checks: [AutoCheck] = []
        if chosen.contains(.auto) && !measured.isEmpty {
            // Per size, auto and the best measured algorithm once more, interleaved, so both see the same noise.
            var autoResults: [BenchResult] = []
            for bytes in sizes {
                let best = results.filter { $0.bytes == bytes }.min { $0.microseconds < $1.microseconds }!
                let pair = try runSweep(SweepPlan(sizes: [bytes], algorithms: [.auto, AllreduceAlgorithm(rawValue: best.algorithm)!],
                                                  iterations: iterations, warmup: warmup, check: check != 0, trials: trials,
                                                  tuning: table), group: group)
                autoResults.append(pair[0])
                checks.append(AutoCheck(bytes: bytes, picked: table.best(bytes: bytes)?.rawValue ?? "?", autoMicroseconds: pair[0].microseconds,
                                        best: best.algorithm, bestMicroseconds: pair[1].microseconds))
            }
            results += autoResults
        }
        if group.rank == 0 {
            let title = "allreduce, float32 sum, in place" + (subgroup != nil ? ", on a sub-group of \(group.worldSize) in a world of \(world.worldSize)" : "")
            // One sweep per table: auto's paired re-runs (beside the best algorithm) get their own.
            print(formatTable(results.filter { $0.algorithm != "auto" }, ranks: group.worldSize, title: title))
            let paired = results.filter { $0.algorithm == "auto" }
            if !paired.isEmpty {
                print(formatTable(paired, ranks: group.worldSize, title: title + "; auto, each size re-measured beside the best algorithm"))
            }
            if !measured.isEmpty { describeModel(table).forEach { print($0) } }
            if !checks.isEmpty { describeAutoChecks(checks).forEach { print($0) } }
            if let json { try writeJSON(results, to: json) }
            if let plot {
                try plotSVG(results, title: "allreduce, \(group.worldSize) ranks, float32 sum").write(toFile: plot, atomically: true, encoding: .utf8)
            }
            if let tuning { try table.write(to: tuning) }
            let wrong = results.reduce(0) { $0 + $1.wrong }
            print("# out of bounds values: \(wrong) \(wrong == 0 ? "OK" : "FAILED")")
            if wrong > 0 { throw ExitCode(1) }
        }
    }
}

func parseBytes(_ text: String) -> Int? {
    let t = text.uppercased()
    let scale = t.hasSuffix("G") ? 1 << 30 : t.hasSuffix("M") ? 1 << 20 : t.hasSuffix("K") ? 1 << 10 : 1
    return Int(scale == 1 ? t : String(t.dropLast())).map { $0 * scale }
}
