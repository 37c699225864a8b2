import ArgumentParser
import Bench
import Collectives
import Foundation
import Topology
import Rendezvous
import Support
import Transport

/// Allreduce benchmark, one process per rank (start it with scripts/bench-allreduce.sh or ddp-launch).
/// Flags follow nccl-tests: -b min bytes, -e max bytes, -f factor, -n iterations, -w warm-up, -c check,
/// -d datatype, -o reduction, -a how times are taken over ranks, -t threads per rank (1 here).
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
    @Option(help: "Timed trials per size and algorithm, interleaved; the median is reported.") var trials = 5
    @Option(name: .customShort("t"), help: "Threads per rank, as nccl-tests' -t: only 1 (each rank is one process with one thread of collectives).") var threads = 1
    @Option(name: .customShort("d"), help: "Data type: float (float32) or bfloat16 (bf16 on the wire, float32 arithmetic; runs the ring).") var datatype = "float"
    @Option(name: .customShort("o"), help: "Reduction: sum, max or avg.") var op = "sum"
    @Flag(help: "Also time out of place (input copied into the result buffer, then reduced), as nccl-tests' first columns.") var outOfPlace = false
    @Option(name: .customShort("a"), help: "Time over ranks, as nccl-tests: 0 rank 0, 1 mean, 2 fastest, 3 slowest (default).") var aggregation = 3
    @Option(help: "Comma-separated: ring,tree,double-tree,halving-doubling,two-shot,auto (auto runs last, with the model fitted to the others; two-shot only where the ranks share a host's arena).")
    var algorithms = "ring,tree,double-tree,halving-doubling,two-shot,auto"
    @Option(help: "Write results as JSON to this file (rank 0).") var json: String?
    @Option(help: "Draw busbw and time against size, per algorithm, into this SVG file (rank 0).") var plot: String?
    @Option(help: "What to time: allreduce, or sendrecv (ring shift), pingpong (ranks 0 and 1; one-way time) or alltoall.")
    var collective = "allreduce"
    @Option(help: "Run on a sub-group of the first K ranks (the others leave at once): what a sub-group costs next to a world of K.")
    var subgroup: Int?
    @Option(help: "Busy work before every timed allreduce, in microseconds, not timed (0: back to back): collectives as a training step meets them, after compute.") var gapUs = 0.0
    @Option(help: "Write the fitted alpha-beta table here (rank 0); SWIFT_DDP_TUNING or allreduce_tuning loads it.") var tuning: String?

    func validate() throws {
        guard let lo = parseBytes(minBytes), lo >= 4 else { throw ValidationError("-b must be at least 4 bytes, not '\(minBytes)'") }
        guard let hi = parseBytes(maxBytes), hi >= lo else { throw ValidationError("-e must be at least -b, not '\(maxBytes)'") }
        guard factor >= 2 else { throw ValidationError("-f must be at least 2") }
        guard iterations >= 1, warmup >= 0, trials >= 1 else { throw ValidationError("-n and --trials must be >= 1 and -w >= 0") }
        guard gapUs >= 0, gapUs.isFinite else { throw ValidationError("--gap-us must be a non-negative number of microseconds") }
        guard gapUs == 0 || collective == "allreduce" else { throw ValidationError("--gap-us times the allreduce sweep only, not --collective \(collective)") }
        guard threads == 1 else { throw ValidationError("-t \(threads): one thread per rank here; start more ranks instead (ddp-launch --nproc-per-node N), and --trials sets the trials") }
        guard wireFormat != nil else { throw ValidationError("-d must be float or bfloat16, not '\(datatype)'") }
        guard reduction != nil else { throw ValidationError("-o must be sum, max or avg, not '\(op)'") }
        guard TimeAggregation(rawValue: aggregation) != nil else { throw ValidationError("-a must be 0, 1, 2 or 3, not \(aggregation)") }
        if wireFormat == .bfloat16 && algorithms.split(separator: ",").contains(where: { $0 != "ring" && $0 != "auto" }) {
            throw ValidationError("-d bfloat16 runs the ring: give --algorithms ring")
        }
        guard collective == "allreduce" || MessagePattern(rawValue: collective) != nil else {
            throw ValidationError("--collective must be allreduce, sendrecv, pingpong or alltoall, not '\(collective)'")
        }
        if let subgroup { guard subgroup >= 1 else { throw ValidationError("--subgroup must be at least 1") } }
        for a in algorithms.split(separator: ",") where AllreduceAlgorithm(rawValue: String(a)) == nil {
            throw ValidationError("unknown algorithm '\(a)'")
        }
    }

    var wireFormat: WireFormat? { ["float": .float32, "float32": .float32, "bfloat16": .bfloat16, "bf16": .bfloat16][datatype] }
    var reduction: ReduceOp? { ["sum": .sum, "max": .max, "avg": .average][op] }
    var timeNote: String { ["rank 0's mean", "the mean over ranks", "the fastest rank's mean", "the slowest rank's mean"][aggregation] }

    func run() throws {
        try BuildCPU.requireRunnable()
        let env = try WorkerEnvironment.fromProcess()
        try prepareWorker(env)
        if env.worldSize == 1 {
            print("# measuring one rank (no collective traffic): start N ranks with ddp-launch --nproc-per-node N -- allreduce-bench")
        }
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
                if let json { try writeJSON(results, metadata: runMetadata(group: group), to: json) }
                let wrong = results.reduce(0) { $0 + $1.wrong }
                print("# out of bounds values: \(wrong) \(wrong == 0 ? "OK" : "FAILED")")
                if wrong > 0 { throw ExitCode(1) }
            }
            return
        }
        var chosen = algorithms.split(separator: ",").map { AllreduceAlgorithm(rawValue: String($0))! }
        if group.arena == nil && chosen.contains(.twoShot) {
            // Elsewhere two-shot runs another algorithm: timing it under its name would mislead.
            chosen.removeAll { $0 == .twoShot }
            if group.rank == 0 { print("# two-shot not measured: these ranks share no arena (ranks on several hosts, lanes off, or a sub-group)") }
        }
        let measured = chosen.filter { $0 != .auto }
        func plan(_ sizes: [Int], _ algorithms: [AllreduceAlgorithm], tuning: TuningTable? = nil) -> SweepPlan {
            var p = SweepPlan(sizes: sizes, algorithms: algorithms, iterations: iterations, warmup: warmup, check: check != 0,
                              trials: trials, tuning: tuning)
            p.op = reduction!; p.wire = wireFormat!; p.aggregation = TimeAggregation(rawValue: aggregation)!
            p.outOfPlace = outOfPlace
            p.gapSeconds = gapUs * 1e-6
            return p
        }
        if group.rank == 0 {
            // nccl-tests' header: the parameters, then the ranks.
            print("# allreduce-bench: minBytes \(parseBytes(minBytes)!) maxBytes \(parseBytes(maxBytes)!) step: \(factor)(factor) warmup iters: \(warmup) iters: \(iterations) trials: \(trials) threads: \(threads) validation: \(check) datatype: \(datatype) redop: \(op) aggregation: \(aggregation)")
            print("# ranks: \(group.worldSize) (\(subgroup != nil ? "sub-group of a world of \(world.worldSize)" : "world")) on \(ProcessInfo.processInfo.hostName), cpu \(cpuModel())")
        }
        var results = try runSweep(plan(sizes, measured), group: group)
        // Every rank has the same results (slowest rank's times), so every rank fits the same table.
        let table = fitTuningTable(results, worldSize: group.worldSize, reductionSecondsPerByte: measureReductionSecondsPerByte(),
                                   measuredOn: "\(group.worldSize) ranks, \(ProcessInfo.processInfo.hostName)")
        var checks: [AutoCheck] = []
        if chosen.contains(.auto) && !measured.isEmpty {
            // Per size, auto and the best measured algorithm once more, interleaved, so both see the same noise.
            var autoResults: [BenchResult] = []
            for bytes in sizes {
                let best = results.filter { $0.bytes == bytes }.min { $0.microseconds < $1.microseconds }!
                let pair = try runSweep(plan([bytes], [.auto, AllreduceAlgorithm(rawValue: best.algorithm)!], tuning: table), group: group)
                autoResults.append(pair[0])
                checks.append(AutoCheck(bytes: bytes, picked: table.best(bytes: bytes)?.rawValue ?? "?", autoMicroseconds: pair[0].microseconds,
                                        best: best.algorithm, bestMicroseconds: pair[1].microseconds))
            }
            results += autoResults
        }
        if group.rank == 0 {
            let title = "allreduce, \(wireFormat == .bfloat16 ? "bf16 on the wire" : "float32") \(op), in place" + (subgroup != nil ? ", on a sub-group of \(group.worldSize) in a world of \(world.worldSize)" : "")
            // One sweep per table: auto's paired re-runs (beside the best algorithm) get their own.
            print(formatTable(results.filter { $0.algorithm != "auto" }, ranks: group.worldSize, title: title, redop: op, timeNote: timeNote))
            let paired = results.filter { $0.algorithm == "auto" }
            if !paired.isEmpty {
                print(formatTable(paired, ranks: group.worldSize, title: title + "; auto, each size re-measured beside the best algorithm", redop: op, timeNote: timeNote))
            }
            if !measured.isEmpty { describeModel(table).forEach { print($0) } }
            if !checks.isEmpty { describeAutoChecks(checks).forEach { print($0) } }
            if let json { try writeJSON(results, metadata: runMetadata(group: group), to: json) }
            if let plot {
                try plotSVG(results, title: "allreduce, \(group.worldSize) ranks, float32 sum").write(toFile: plot, atomically: true, encoding: .utf8)
            }
            if let tuning { try table.write(to: tuning) }
            let wrong = results.reduce(0) { $0 + $1.wrong + ($1.outOfPlaceWrong ?? 0) }
            print("# out of bounds values: \(wrong) \(wrong == 0 ? "OK" : "FAILED")")
            let sweep = results.filter { $0.algorithm != "auto" }
            print(String(format: "# Avg bus bandwidth    : %.4f GB/s", sweep.isEmpty ? 0 : sweep.map(\.busbwGBps).reduce(0, +) / Double(sweep.count)))
            if wrong > 0 { throw ExitCode(1) }
        }
    }

    /// What a reader of the JSON needs to place the figures: machine, ranks, date, commit, parameters.
    func runMetadata(group: ProcessGroup) -> [String: String] {
        let lanes = group.sharedMemoryPeers.count, peers = group.worldSize - 1
        var metadata = ["cpu": cpuModel(), "ranks": String(group.worldSize), "host": ProcessInfo.processInfo.hostName,
                        "transport": peers == 0 ? "none" : lanes == peers ? "shared memory" : lanes == 0 ? "tcp" : "shared memory to \(lanes) of \(peers) peers, tcp to the rest",
                        "date": ISO8601DateFormatter().string(from: Date()), "collective": collective,
                        "arguments": CommandLine.arguments.dropFirst().joined(separator: " ")]
        // The commit of the checkout this binary was built in (.build/<triple>/release/ is three levels down).
        let root = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        if let head = try? String(contentsOfFile: root + "/.git/HEAD", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) {
            let commit = head.hasPrefix("ref: ") ? (try? String(contentsOfFile: root + "/.git/" + head.dropFirst(5), encoding: .utf8)) ?? head : head
            metadata["commit"] = commit.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return metadata
    }
}

/// The CPU model from /proc/cpuinfo.
func cpuModel() -> String { CPUInfo.read().modelName }

func parseBytes(_ text: String) -> Int? {
    let t = text.uppercased()
    let scale = t.hasSuffix("G") ? 1 << 30 : t.hasSuffix("M") ? 1 << 20 : t.hasSuffix("K") ? 1 << 10 : 1
    return Int(scale == 1 ? t : String(t.dropLast())).map { $0 * scale }
}
