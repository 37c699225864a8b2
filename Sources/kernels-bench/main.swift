import ArgumentParser
import Foundation
import NN
import Tensors
import Support

/// SGEMM throughput on square and GPT-recipe shapes, optionally next to a reference table printed by
/// bench/references/sgemm_numpy.py in the same run, with the same transposes (scripts/bench-kernels.sh
/// does that). Every timed result is checked against a Double reference on sampled entries.
@main
struct KernelsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels-bench",
        abstract: "SGEMM GFLOP/s of swift-ddp's kernels, next to a reference when given.")

    @Option(help: "Output of bench/references/sgemm_numpy.py measured in the same run; adds numpy columns and the ratio.")
    var reference: String?

    @Option(help: "A command that prints sgemm_numpy.py's row for the shape given as its last four arguments (\"M K N TRANS\"), run right before each of ours, so both sides of a ratio are measured within a second of each other (e.g. \"python3 bench/references/sgemm_numpy.py\").")
    var referenceCommand: String?

    @Option(help: "Micro-kernel: native, avx2 or avx512.")
    var kernel: String = "native"

    @Option(name: .customLong("only"), help: "Measure only this GEMM, as \"M K N TRANS\" (e.g. \"10 64 256 TN\"); repeatable. Skips the GPT step profile, so a profiler sees that GEMM alone.")
    var only: [String] = []

    @Flag(name: .customLong("step-only"), help: "Measure only the GPT step and its per-operation profile (no GEMM table): seconds instead of a minute, for comparing two builds in alternating runs.")
    var stepOnly = false

    /// The measured peak, GFLOP/s (set at the start of run).
    nonisolated(unsafe) static var peak = 1.0
    var peak: Double { Self.peak }

    /// "M K N TRANS" as (M, K, N, TRANS), nil unless the sizes are positive and TRANS is NN, NT, TN or TT.
    static func shape(_ text: String) -> (Int, Int, Int, String)? {
        let parts = text.split(separator: " ")
        guard parts.count == 4, let m = Int(parts[0]), let k = Int(parts[1]), let n = Int(parts[2]), m > 0, k > 0, n > 0,
              ["NN", "NT", "TN", "TT"].contains(String(parts[3])) else { return nil }
        return (m, k, n, String(parts[3]))
    }

    func validate() throws {
        guard ["native", "avx2", "avx512"].contains(kernel) else {
            throw ValidationError("--kernel must be native, avx2 or avx512, not '\(kernel)'")
        }
        if stepOnly && !only.isEmpty { throw ValidationError("--step-only and --only select different measurements; give one") }
        for shape in only where Self.shape(shape) == nil {
            throw ValidationError("--only takes \"M K N TRANS\" with positive sizes and TRANS one of NN NT TN TT, not '\(shape)'")
        }
    }

    func run() throws {
        try BuildCPU.requireRunnable()
        let micro: GemmMicroKernel = kernel == "avx2" ? .simd8x6x16 : kernel == "avx512" ? .simd16x6x32 : .native
        var numpy = try reference.map(parseReference) ?? [:]
        let cpu = CPUFeatures.current
        print("# cpu: \(cpu.modelName)  avx2=\(cpu.avx2) fma=\(cpu.fma) avx512f=\(cpu.avx512f)  micro-kernel: \(micro)"
              + "  built for: \(BuildCPU.target)\(CPUFeatures.builtWithAVX512F ? " (AVX-512)" : " (no AVX-512)")")
        // The core's float32 peak, measured: independent FMA chains (12 x SIMD16) and our GEMM on a
        // cache-resident 192^3; the larger is the denominator of every "% peak" below.
        let chains = (0..<5).map { _ in fmaChainGFLOPS(seconds: 0.05) }.max()!
        let cached = (0..<5).map { _ in cachedGemmGFLOPS(seconds: 0.05) }.max()!
        Self.peak = max(chains, cached)
        print(String(format: "# measured peak: FMA chains %.1f GFLOP/s, cache-resident GEMM 192^3 %.1f GFLOP/s; peak = %.1f", chains, cached, peak))
        if stepOnly {
            gptStep()
            return
        }
        print("# C[M,N] = A[M,K] B[K,N]; GFLOP/s = 2MNK/t; best and median of 5 trials of ~0.3 s")
        let compared = !numpy.isEmpty || referenceCommand != nil
        print("#     M     K     N  trans | swift best median %peak | checked" + (compared ? " | numpy best median | ratio (median)" : ""))
        // Squares in NN; the GPT's layer shapes in all three uses (forward NT, backward NN and TN, the
        // same M K N as the recipe's shapes are symmetric); the MLP's layers as the trainer calls them:
        // forward NT, dW TN, dx NN (fc1 needs no dx), plus the NN rows measured since the start.
        let all = "NN NT TN"
        let shapes: [(Int, Int, Int, String)] = [(256, 256, 256, "NN"), (512, 512, 512, "NN"), (1024, 1024, 1024, "NN"),
                                                 (768, 128, 512, all), (768, 512, 128, all), (768, 128, 384, all), (768, 384, 128, all),
                                                 (768, 512, 2048, all), (768, 2048, 512, all),
                                                 (64, 784, 256, "NN NT"), (256, 64, 784, "TN"),
                                                 (64, 256, 10, "NN NT"), (10, 64, 256, "TN"), (64, 10, 256, "NN")]
        let selected = only.isEmpty ? shapes : only.compactMap(Self.shape)
        var ratios: [Double] = [], wrong = 0
        for (m, k, n, uses) in selected {
            for use in uses.split(separator: " ") {
                if let referenceCommand {
                    let row = try runReference(referenceCommand, "\(m) \(k) \(n) \(use)")
                    numpy.merge(row) { _, new in new }
                }
                let ta: Transpose = use.first == "T" ? .transposed : .none, tb: Transpose = use.last == "T" ? .transposed : .none
                let a = Tensor(zeros: [m * k]), b = Tensor(zeros: [k * n]), c = Tensor(zeros: [m * n])
                for i in 0..<a.count { a[i] = Float(i % 13) * 0.01 }
                for i in 0..<b.count { b[i] = Float(i % 7) * 0.01 }
                let (best, median) = measure {
                    gemm(ta, tb, m: m, n: n, k: k, a: a.data, b: b.data, c: c.data, kernel: micro)
                }
                let flops = 2.0 * Double(m * n * k)
                let trans = (ta == .none ? "N" : "T") + (tb == .none ? "N" : "T")
                // The timed C, checked: 64 sampled entries against a Double dot product of the same inputs.
                let bad = sampledErrors(ta, tb, m: m, n: n, k: k, a: a, b: b, c: c)
                wrong += bad
                var line = String(format: "  %5d %5d %5d  %5@ | %10.1f %6.1f %4.0f%% | %7@", m, k, n, trans, flops / best / 1e9, flops / median / 1e9,
                                  100 * flops / median / 1e9 / peak, bad == 0 ? "ok" : "\(bad) bad")
                if let ref = numpy["\(m) \(k) \(n) \(trans)"] {
                    let ratio = (flops / median / 1e9) / ref.median
                    ratios.append(ratio)
                    line += String(format: " | %10.1f %6.1f | %5.2fx", ref.best, ref.median, ratio)
                }
                print(line)
            }
        }
        if !ratios.isEmpty {
            print(String(format: "# ratio to numpy, same shapes and transposes (median): min %.2fx, geometric mean %.2fx", ratios.min()!,
                         Foundation.exp(ratios.map { Foundation.log($0) }.reduce(0, +) / Double(ratios.count))))
        }
        if only.isEmpty {
            gptStep()
            geluForms()
        }
        print("# checked results: \(wrong == 0 ? "all correct" : "\(wrong) wrong entries")")
        if wrong > 0 { throw ExitCode(1) }
    }

    /// Entries of C off from a Double reference by more than float32 accumulation allows
    /// (K·2^-22 relative to the sum of |products|), on 64 entries spread over C.
    func sampledErrors(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, a: Tensor, b: Tensor, c: Tensor) -> Int {
        var bad = 0
        for s in 0..<64 {
            let i = (s * 7919) % m, j = (s * 104_729) % n
            var sum = 0.0, magnitude = 0.0
            for p in 0..<k {
                let x = Double(ta == .none ? a[i * k + p] : a[p * m + i]), y = Double(tb == .none ? b[p * n + j] : b[j * k + p])
                sum += x * y; magnitude += abs(x * y)
            }
            if abs(Double(c[i * n + j]) - sum) > Double(k) * 0x1p-22 * magnitude + 1e-30 { bad += 1 }
        }
        return bad
    }

    /// One forward+backward of the Shakespeare recipe's GPT (4 layers, 4 heads, 128 wide, 64 tokens,
    /// batch 12, vocabulary 65), so the kernels that are not GEMM are measured too (FLOPs counted by
    /// GPTConfiguration.trainingFLOPs, as the trainer counts them for MFU).
    func gptStep() {
        let (B, T, C, L, V) = (12, 64, 128, 4, 65)
        let gpt = GPT(GPTConfiguration(vocabularySize: V, blockSize: T, layers: L, heads: 4, embedding: C))
        gpt.initialize(seed: 1)
        var rng = SeededRandom(seed: 2)
        let tokens = (0..<(B * T)).map { _ in Int32(rng.nextInt(below: V)) }
        let batch = TokenBatch(tokens: tokens, targets: tokens.reversed(), batchSize: B, time: T)
        let (best, median) = measure(target: 1.0) {
            gpt.parameters.zeroGradients()
            _ = try? gpt.forward(batch) // one rank: no collective, cannot throw
            try? gpt.backward(lossScale: 1)
        }
        let flops = gpt.configuration.trainingFLOPs(batch: B, time: T)
        print(String(format: "# GPT recipe forward+backward (B=12 T=64 C=128 L=4): %.1f ms best, %.1f ms median, %.1f GFLOP/s (%.2f GFLOP/step), %.0f%% of peak",
                     best * 1000, median * 1000, flops / median / 1e9, flops / 1e9, 100 * flops / median / 1e9 / peak))
        // Where the step goes: 20 profiled steps, per operation (the rest: buffer zeroing, residual adds).
        let optimizer = AdamW(gpt.parameters, .init(weightDecay: 0.1))
        let steps = 20
        var wall = 0.0
        OperationProfile.start()
        for _ in 0..<steps {
            let start = DispatchTime.now().uptimeNanoseconds
            gpt.parameters.zeroGradients()
            _ = try? gpt.forward(batch)
            try? gpt.backward(lossScale: 1)
            OperationProfile.measure("adamw step", flops: 0) { optimizer.step(learningRate: 1e-4) }
            wall += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        let rows = OperationProfile.stop()
        print("# per-operation profile of one step (mean of \(steps), AdamW included):")
        let width = 45 // the longest name, "mlp.c_proj linear backward dx + gelu backward", and a space
        print("#   " + "operation".padding(toLength: width, withPad: " ", startingAt: 0) + "ms/step  % of step  GFLOP/s  % peak")
        for r in rows {
            let ms = r.seconds / Double(steps) * 1000
            let rate = r.flops > 0 ? String(format: "%8.1f  %5.0f%%", r.flops / r.seconds / 1e9, 100 * r.flops / r.seconds / 1e9 / peak) : "       -       -"
            print("#   " + r.name.padding(toLength: width, withPad: " ", startingAt: 0) + String(format: "%7.3f  %8.1f%%  %@", ms, 100 * r.seconds / wall, rate))
        }
        let rest = wall - rows.reduce(0) { $0 + $1.seconds }
        print("#   " + "rest (zeroing, residual adds, copies)".padding(toLength: width, withPad: " ", startingAt: 0)
              + String(format: "%7.3f  %8.1f%%", rest / Double(steps) * 1000, 100 * rest / wall))
    }

    /// The two GELU forms side by side on one recipe block's MLP activations (12 x 64 rows x 512): the
    /// exact one (erf) costs an exp and a division more than the tanh one per element.
    func geluForms() {
        let n = 12 * 64 * 512
        let x = Tensor(zeros: [n]), y = Tensor(zeros: [n]), dx = Tensor(zeros: [n])
        var rng = SeededRandom(seed: 3)
        x.fillNormal(std: 1, using: &rng)
        var medians: [GELUForm: Double] = [:]
        for form in [GELUForm.tanh, .exact] {
            let (_, median) = measure(target: 0.3) {
                geluForward(x.data, into: y.data, count: n, form: form)
                geluBackward(x.data, y.data, accumulatingInto: dx.data, count: n, form: form)
            }
            medians[form] = median
        }
        print(String(format: "# GELU forward+backward over 12x64x512 floats: tanh %.3f ms, exact %.3f ms (exact / tanh %.2fx)",
                     medians[.tanh]! * 1000, medians[.exact]! * 1000, medians[.exact]! / medians[.tanh]!))
    }

    /// Lines of sgemm_numpy.py: "M K N TRANS best median".
    func parseReference(_ path: String) throws -> [String: (best: Double, median: Double)] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let table = parseReferenceRows(text)
        guard !table.isEmpty else { throw ValidationError("no sgemm_numpy.py rows in \(path)") }
        return table
    }

    /// Runs `command shape` through the shell and reads its row for that shape.
    func runReference(_ command: String, _ shape: String) throws -> [String: (best: Double, median: Double)] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "\(command) \(shape)"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let table = parseReferenceRows(String(decoding: data, as: UTF8.self))
        guard process.terminationStatus == 0, table[shape] != nil else {
            throw ReferenceFailed(description: "--reference-command '\(command) \(shape)' exited \(process.terminationStatus) without a row for \(shape)")
        }
        return table
    }

    /// sgemm_numpy.py's rows, "M K N TRANS best median", keyed by "M K N TRANS" (comments skipped).
    func parseReferenceRows(_ text: String) -> [String: (best: Double, median: Double)] {
        var table: [String: (best: Double, median: Double)] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let fields = line.split(separator: " ")
            guard fields.count == 6, let best = Double(fields[4]), let median = Double(fields[5]) else { continue }
            table["\(fields[0]) \(fields[1]) \(fields[2]) \(fields[3])"] = (best, median)
        }
        return table
    }
}

/// The reference command did not give its row (the run stops: a ratio without its reference is no result).
struct ReferenceFailed: Error, CustomStringConvertible {
    let description: String
}
