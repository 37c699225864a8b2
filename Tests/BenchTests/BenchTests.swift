import Bench
import Collectives
import Foundation
import TestSupport
import XCTest

final class BenchTests: XCTestCase {
    func testBusBandwidthIsNCCLTestsFormula() {
        XCTAssertEqual(busBandwidth(algorithmBandwidth: 2, worldSize: 4), 3, accuracy: 1e-12) // 2 * 2*3/4
        XCTAssertEqual(busBandwidth(algorithmBandwidth: 2, worldSize: 2), 2, accuracy: 1e-12)
        XCTAssertEqual(busBandwidth(algorithmBandwidth: 2, worldSize: 1), 2)
        let r = BenchResult(algorithm: "ring", bytes: 1 << 20, ranks: 8, seconds: 1e-3, wrong: 0)
        XCTAssertEqual(r.count, 1 << 18)
        XCTAssertEqual(r.microseconds, 1000, accuracy: 1e-9)
        XCTAssertEqual(r.algbwGBps, 1.048576, accuracy: 1e-9)
        XCTAssertEqual(r.busbwGBps, 1.048576 * 14 / 8, accuracy: 1e-9)
        XCTAssertEqual(geometricSizes(minimum: 4096, maximum: 1 << 20, factor: 4), [4096, 16384, 65536, 262144, 1048576])
        XCTAssertEqual([4096, 1 << 20, 1536, 100].map(formatBytes), ["4K", "1M", "1.5K", "100"])
    }

    /// The fit recovers known constants: exactly from clean data, within a few percent under 3 % noise.
    func testAlphaBetaFitRecoversKnownConstants() {
        let truth = LinearCost(alpha: 25e-6, beta: 1 / 2.5e9)
        let sizes = geometricSizes(minimum: 4096, maximum: 64 << 20, factor: 4)
        let clean = fitAlphaBeta(sizes.map { ($0, truth.seconds(bytes: $0)) })
        XCTAssertEqual(clean.alpha, truth.alpha, accuracy: truth.alpha * 1e-9)
        XCTAssertEqual(clean.beta, truth.beta, accuracy: truth.beta * 1e-9)
        var seed: UInt64 = 42
        func noise() -> Double { // deterministic uniform in [-0.03, 0.03]
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return (Double(seed >> 11) / Double(1 << 53) - 0.5) * 0.06
        }
        let noisy = fitAlphaBeta(sizes.flatMap { s in (0..<5).map { _ in (s, truth.seconds(bytes: s) * (1 + noise())) } })
        XCTAssertEqual(noisy.alpha, truth.alpha, accuracy: truth.alpha * 0.05)
        XCTAssertEqual(noisy.beta, truth.beta, accuracy: truth.beta * 0.05)
        // Pure latency or pure bandwidth data gives the one constant, never a negative other.
        let flat = fitAlphaBeta(sizes.map { ($0, 1e-5) })
        XCTAssertEqual(flat.alpha, 1e-5, accuracy: 1e-12); XCTAssertEqual(flat.beta, 0)
        let linear = fitAlphaBeta(sizes.map { ($0, Double($0) * 1e-9) })
        XCTAssertEqual(linear.beta, 1e-9, accuracy: 1e-18); XCTAssertEqual(linear.alpha, 0, accuracy: 1e-15)
    }

    /// auto picks what the model predicts fastest; crossovers are where the lines meet; a table for
    /// another world size is ignored.
    func testAutoChoosesAccordingToTheModel() {
        let table = TuningTable(worldSize: 4, models: [
            "halving-doubling": LinearCost(alpha: 10e-6, beta: 1 / 1.0e9),
            "ring": LinearCost(alpha: 40e-6, beta: 1 / 2.0e9),
            "tree": LinearCost(alpha: 20e-6, beta: 1 / 0.5e9),
        ])
        // halving-doubling vs ring: 10us + x/1e9 = 40us + x/2e9  ->  x = 60 KB.
        let crossing = table.crossovers().first { $0.faster == "halving-doubling" && $0.slower == "ring" }
        XCTAssertEqual(crossing?.bytes ?? 0, 60_000, accuracy: 1e-6)
        XCTAssertEqual(chooseAlgorithm(bytes: 4096, worldSize: 4, table: table), .halvingDoubling)
        XCTAssertEqual(chooseAlgorithm(bytes: 59_000, worldSize: 4, table: table), .halvingDoubling)
        XCTAssertEqual(chooseAlgorithm(bytes: 61_000, worldSize: 4, table: table), .ring)
        XCTAssertEqual(chooseAlgorithm(bytes: 64 << 20, worldSize: 4, table: table), .ring)
        XCTAssertEqual(chooseAlgorithm(bytes: 4096, worldSize: 2, table: table), .halvingDoubling, "other world size: fixed rule")
        XCTAssertEqual(chooseAlgorithm(bytes: 1 << 20, worldSize: 2, table: table), .ring, "other world size: fixed rule")
        // In the options a program passes, it drives auto for that world size; the file round-trips,
        // also through SWIFT_DDP_TUNING; an explicit algorithm ignores it.
        let path = scratchFile("tuning.json")
        XCTAssertNoThrow(try table.write(to: path))
        XCTAssertEqual(try TuningTable.load(path: path), table)
        var options = CollectiveOptions(tuning: try? CollectiveOptions.tuning(fromEnvironmentPath: path))
        XCTAssertEqual(options.algorithm(bytes: 61_000, worldSize: 4), .ring)
        XCTAssertEqual(options.algorithm(bytes: 59_000, worldSize: 4), .halvingDoubling)
        options.algorithm = .tree
        XCTAssertEqual(options.algorithm(bytes: 59_000, worldSize: 4), .tree)
        XCTAssertThrowsError(try CollectiveOptions.tuning(fromEnvironmentPath: path + ".missing")) {
            XCTAssertTrue("\($0)".hasPrefix("SWIFT_DDP_TUNING: "), "\($0)")
        }
    }

    /// A real 2-rank sweep: the table, the JSON and the plot hold every requested size and algorithm,
    /// and the fitted model and the auto comparison are printed.
    func testSweepOutputsHoldEverySizeAndAlgorithm() throws {
        let build = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let dir = scratchDirectory("bench")
        let (status, output, _) = try runToEnd(build + "/ddp-launch", [
            "--nproc-per-node", "2", "--", "allreduce-bench", "-b", "4K", "-e", "256K", "-f", "4", "-n", "10", "--trials", "3",
            "--json", dir + "/r.json", "--plot", dir + "/r.svg", "--tuning", dir + "/t.json"])
        XCTAssertEqual(status, 0, output)
        let sizes = [4096, 16384, 65536, 262144]
        let algorithms = ["ring", "tree", "double-tree", "halving-doubling", "two-shot", "auto"]
        let run = try JSONDecoder().decode(BenchRun.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/r.json")))
        let results = run.results
        XCTAssertEqual(run.metadata["ranks"], "2")
        XCTAssertEqual(run.metadata["transport"], "shared memory")
        XCTAssertNotNil(run.metadata["cpu"]); XCTAssertNotNil(run.metadata["date"]); XCTAssertNotNil(run.metadata["commit"])
        XCTAssertTrue(output.contains("# allreduce-bench: minBytes 4096 maxBytes 262144") && output.contains("# Avg bus bandwidth"), output)
        XCTAssertEqual(Set(results.map { "\($0.algorithm)@\($0.bytes)" }), Set(algorithms.flatMap { a in sizes.map { "\(a)@\($0)" } }))
        XCTAssertTrue(results.allSatisfy { $0.wrong == 0 && $0.microseconds > 0 && $0.ranks == 2 })
        for r in results {
            // nccl-tests' definitions, written out here rather than through the functions under test:
            // algbw = bytes / time; busbw = algbw x 2(n-1)/n, which is algbw itself for 2 ranks.
            XCTAssertEqual(r.algbwGBps, Double(r.bytes) / (r.microseconds * 1e-6) / 1e9, accuracy: 1e-9 * max(1, r.algbwGBps))
            XCTAssertEqual(r.busbwGBps, r.algbwGBps * 2 * 1 / 2, accuracy: 1e-12)
            let row = output.split(separator: "\n").contains { line in
                let fields = line.split(separator: " ")
                return fields.count >= 8 && fields[0] == "[rank" && fields[2] == "\(r.bytes)" && fields[6] == "\(r.algorithm)"
            }
            XCTAssertTrue(row, "no table row for \(r.algorithm) at \(r.bytes):\n\(output)")
        }
        XCTAssertTrue(output.contains("alpha-beta model, 2 ranks"), output)
        XCTAssertEqual(output.components(separatedBy: "auto -> ").count - 1, sizes.count, output)
        let svg = try String(contentsOfFile: dir + "/r.svg", encoding: .utf8)
        for a in algorithms { XCTAssertEqual(svg.components(separatedBy: "data-algorithm=\"\(a)\"").count - 1, 2, "two lines for \(a)") }
        XCTAssertTrue(svg.contains("bus bandwidth (GB/s)") && svg.contains("time per allreduce"))
        let table = try TuningTable.load(path: dir + "/t.json")
        XCTAssertEqual(table.worldSize, 2)
        XCTAssertEqual(Set(table.models.keys), ["ring", "tree", "double-tree", "halving-doubling", "two-shot"])
        // Without lanes there is no arena: two-shot would run another algorithm, so it is not measured.
        let (tcpStatus, tcpOutput, _) = try runToEnd(build + "/ddp-launch", [
            "--nproc-per-node", "2", "--", "allreduce-bench", "-b", "4K", "-e", "4K", "-n", "10", "--trials", "1",
            "--json", dir + "/tcp.json"], environment: ["SWIFT_DDP_SHM_KB": "0"])
        XCTAssertEqual(tcpStatus, 0, tcpOutput)
        XCTAssertTrue(tcpOutput.contains("# two-shot not measured: these ranks share no arena"), tcpOutput)
        let tcpRun = try JSONDecoder().decode(BenchRun.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/tcp.json")))
        XCTAssertEqual(Set(tcpRun.results.map(\.algorithm)), ["ring", "tree", "double-tree", "halving-doubling", "auto"])
    }

    /// nccl-tests' -d, -o, -a on real ranks: max and avg reductions and bf16 on the wire give exact (or
    /// one-rounding) results; -t other than 1, and a bad -o, are refused with one line.
    func testDatatypeReductionAndAggregationFlags() throws {
        let build = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        for flags in [["-o", "max", "-a", "1", "--algorithms", "ring,tree"], ["-o", "avg", "-a", "0", "--algorithms", "ring,halving-doubling"],
                      ["-d", "bfloat16", "-o", "avg", "--algorithms", "ring", "-a", "2"], ["--out-of-place", "-o", "max", "--algorithms", "ring,tree"]] {
            let (status, output, _) = try runToEnd(build + "/ddp-launch", ["--nproc-per-node", "3", "--", "allreduce-bench", "-b", "4K", "-e", "64K",
                                                                          "-n", "5", "--trials", "2"] + flags)
            XCTAssertEqual(status, 0, "\(flags): \(output)")
            XCTAssertTrue(output.contains("out of bounds values: 0 OK"), "\(flags): \(output)")
            if flags.contains("--out-of-place") {
                let rows = output.split(separator: "\n").filter { $0.hasPrefix("[rank 0]") && $0.contains(" max ") && !$0.contains("#") }
                XCTAssertFalse(rows.isEmpty, output)
                XCTAssertTrue(output.contains("oop time") && rows.allSatisfy { $0.split(separator: " ").count == 15 }, "out-of-place columns missing:\n\(output)")
            }
        }
        for (flags, mentions) in [(["-t", "2"], "one thread per rank"), (["-o", "prod"], "-o must be")] {
            let (status, output, _) = try runToEnd(build + "/allreduce-bench", flags)
            XCTAssertNotEqual(status, 0, output)
            XCTAssertTrue(output.contains(mentions), output)
        }
        let (alone, aloneOutput, _) = try runToEnd(build + "/allreduce-bench", ["-b", "4K", "-e", "4K", "-n", "3", "--trials", "1"])
        XCTAssertEqual(alone, 0, aloneOutput)
        XCTAssertTrue(aloneOutput.contains("measuring one rank"), aloneOutput)
    }
}
