import Foundation
import NN
import TestSupport
import Transport
import XCTest

/// Bad launcher options: one clear line, exit code 2, nothing started.
final class LauncherOptionTests: XCTestCase {
    func testBadOptionsGetOneLineAndExitCode2() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let busy = try Listener(host: "127.0.0.1", port: 0)
        let dir = scratchDirectory("launcher-options")
        let openSecret = dir + "/open.secret", blocker = dir + "/file"
        _ = FileManager.default.createFile(atPath: openSecret, contents: Data(String(repeating: "ab", count: 16).utf8), attributes: [.posixPermissions: 0o644])
        _ = FileManager.default.createFile(atPath: blocker, contents: Data())
        let cases: [(arguments: [String], mentions: String)] = [
            (["--nproc-per-node", "0", "--", config], "--nproc-per-node"),
            (["--nproc-per-node", "two", "--", config], "--nproc-per-node"),
            (["--bogus-flag", "3", "--", config], "bogus-flag"),
            (["--nproc-per-node", "2", "--", "/nonexistent/config.json"], "/nonexistent/config.json"),
            (["--nproc-per-node", "2", "--master-port", String(busy.port), "--", config], "\(busy.port)"),
            (["--nproc-per-node", "2", "--numa-bind", "sockets", "--", config], "--numa-bind"),
            (["--nproc-per-node", "2", "--max-restarts", "-1", "--", config], "--max-restarts"),
            (["--nproc-per-node", "2", "--iface", "no-such-interface0", "--", config], "no-such-interface0"),
            (["--nproc-per-node", "2"], "nothing to launch"),
            (["--nproc-per-node", "2", "--timeout", "inf", "--", config], "--timeout"),
            (["--nproc-per-node", "2", "--secret-file", openSecret, "--", config], "readable by others"),
            (["--nproc-per-node", "2", "--secret", "abcd", "--", config], "at least 16 bytes"),
            (["--nproc-per-node", "2", "--log-dir", blocker + "/logs", "--", config], "--log-dir"),
            (["--nnodes", "2", "--master-port", "29999", "--nproc-per-node", "1", "--", config], "shared secret"),
        ]
        for (arguments, mentions) in cases {
            let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch", arguments)
            let lines = output.split(separator: "\n").filter { !$0.hasPrefix("[launcher] placement") }
            XCTAssertEqual(status, 2, "\(arguments): \(output)")
            XCTAssertEqual(lines.count, 1, "\(arguments) should print one line:\n\(output)")
            XCTAssertTrue(output.contains(mentions), "\(arguments): '\(output)' should mention \(mentions)")
            XCTAssertFalse(output.contains("[rank "), "\(arguments) started ranks:\n\(output)")
        }
    }

    /// The secret need not be in argv (where ps shows it): from a private file or the launcher's
    /// SWIFT_DDP_SECRET, and the ranks get exactly that secret.
    func testSecretFromAFileOrTheEnvironmentReachesTheRanks() throws {
        let dir = scratchDirectory("launcher-secret")
        let secret = String(repeating: "5a", count: 16), file = dir + "/job.secret"
        _ = FileManager.default.createFile(atPath: file, contents: Data((secret + "\n").utf8), attributes: [.posixPermissions: 0o600])
        let show = ["--nproc-per-node", "2", "--", "/bin/sh", "-c", "echo secret=$SWIFT_DDP_SECRET"]
        let (fromFile, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch", ["--secret-file", file] + show)
        XCTAssertEqual(fromFile, 0, output)
        XCTAssertEqual(output.components(separatedBy: "secret=\(secret)").count - 1, 2, output)
        let (fromEnvironment, envOutput, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch", show,
                                                           environment: ["SWIFT_DDP_SECRET": secret])
        XCTAssertEqual(fromEnvironment, 0, envOutput)
        XCTAssertEqual(envOutput.components(separatedBy: "secret=\(secret)").count - 1, 2, envOutput)
    }

    /// The launcher's own options in torchrun's spellings work, and --help/-h/--version answer.
    func testTorchrunSpellingsAndHelp() throws {
        let launch = DataParallelTests.buildDirectory + "/ddp-launch"
        for flag in ["--help", "-h"] {
            let (status, output, _) = try runToEnd(launch, [flag])
            XCTAssertEqual(status, 0, output)
            XCTAssertTrue(output.contains("USAGE: ddp-launch") && output.contains("--nproc-per-node"), output)
        }
        let (versionStatus, version, _) = try runToEnd(launch, ["--version"])
        XCTAssertEqual(versionStatus, 0, version)
        XCTAssertTrue(version.hasPrefix("ddp-launch (swift-ddp)"), version)
        let port = try Listener(host: "127.0.0.1", port: 0)
        let free = port.port
        port.close()
        let (status, output, _) = try runToEnd(launch, ["--standalone", "--nproc_per_node=2", "--rdzv-endpoint", "127.0.0.1:\(free)",
                                                        "--rdzv-backend", "c10d", "--", "/bin/sh", "-c",
                                                        "echo rank=$RANK store=$SWIFT_DDP_STORE_PORT master=$MASTER_PORT"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output.components(separatedBy: "store=\(free) ").count - 1, 2, output)
        XCTAssertFalse(output.contains("master=\(free)"), "MASTER_PORT must be left free for the program:\n\(output)")
        let (elastic, elasticOutput, _) = try runToEnd(launch, ["--nnodes", "1:4", "--", "/bin/true"])
        XCTAssertEqual(elastic, 2, elasticOutput)
        XCTAssertTrue(elasticOutput.contains("elastic ranges are not supported"), elasticOutput)
    }

    /// A real PyTorch gloo script (init_process_group from the environment) runs unchanged under
    /// scripts/launch.sh: MASTER_PORT is free for its TCPStore, torchrun's variables are set.
    func testPyTorchScriptRunsUnderTheLauncher() throws {
        let candidates = [ProcessInfo.processInfo.environment["SWIFT_DDP_TORCH_PYTHON"], "/tmp/swift-ddp-ref-venv/bin/python"].compactMap { $0 }
        guard let python = candidates.first(where: { (try? runToEnd($0, ["-c", "import torch"]).status) == 0 }) else {
            throw XCTSkip("no Python with PyTorch (scripts/test.sh installs one into /tmp/swift-ddp-ref-venv; SWIFT_DDP_TORCH_PYTHON names another)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/fixtures/torch_gloo_check.py"
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let (status, output, _) = try runToEnd("/bin/bash", [root + "/scripts/launch.sh", "--nproc-per-node", "2", "--", python, script])
        XCTAssertEqual(status, 0, output)
        for rank in 0..<2 { XCTAssertTrue(output.contains("torch rank \(rank) of 2 OK: sum 3"), output) }
    }

    /// --log-dir writes each rank's lines (without the prefix) to DIR/rankN.log as well.
    func testLogDirHoldsEachRanksOutput() throws {
        let dir = scratchDirectory("log-dir") + "/logs"
        let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch",
                                               ["--nproc-per-node", "2", "--log-dir", dir, "--", "/bin/sh", "-c", "echo hello from $RANK; echo second line"])
        XCTAssertEqual(status, 0, output)
        for rank in 0..<2 {
            let text = try String(contentsOfFile: dir + "/rank\(rank).log", encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            XCTAssertTrue(lines[0].hasPrefix("=== ") && lines[0].contains("attempt 0, rank \(rank)"), text)
            XCTAssertEqual(Array(lines.dropFirst()), ["hello from \(rank)", "second line", ""])
        }
        // A restart appends: the failed attempt's lines stay, under their own header.
        let (restarted, restartOutput, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch",
            ["--nproc-per-node", "1", "--max-restarts", "1", "--log-dir", dir, "--", "/bin/sh", "-c",
             "echo attempt $SWIFT_DDP_RESTART_COUNT; [ $SWIFT_DDP_RESTART_COUNT = 1 ]"])
        XCTAssertEqual(restarted, 0, restartOutput)
        let text = try String(contentsOfFile: dir + "/rank0.log", encoding: .utf8)
        for needle in ["hello from 0", "attempt 0, rank 0", "attempt 0\n", "attempt 1, rank 0", "attempt 1\n"] {
            XCTAssertTrue(text.contains(needle), "'\(needle)' missing from\n\(text)")
        }
    }

    /// A rank that dies of an illegal instruction (a build for another CPU, the usual cause) is named with
    /// its signal, and the launcher says what to do about it: rebuild, or build for the hosts' oldest CPU.
    func testIllegalInstructionNamesTheBuildsCPU() throws {
        let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch",
            ["--nproc-per-node", "2", "--", "/bin/sh", "-c", "[ $RANK = 1 ] && kill -ILL $$; sleep 30"])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("FAILED: rank 1 (pid "), output)
        XCTAssertTrue(output.contains("killed by signal \(SIGILL) (SIGILL): an illegal instruction"), output)
        XCTAssertTrue(output.contains("SWIFT_DDP_TARGET_CPU"), output)
    }

    /// A host whose CPU lacks what the build uses (shown to the ranks through SWIFT_DDP_CPUINFO): each
    /// rank stops before any kernel runs, with one line naming the missing instruction sets, and the
    /// launcher reports the first rank's exit with that line instead of a SIGILL.
    func testARankOnACPUTheBuildDoesNotSuitStopsWithTheReason() throws {
        let fake = scratchDirectory("old-cpu") + "/cpuinfo"
        try "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse sse2\n".write(toFile: fake, atomically: true, encoding: .utf8)
        let environment = ["SWIFT_DDP_CPUINFO": fake]
        let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch",
            ["--nproc-per-node", "2", "--", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory,
             "--out-dir", scratchDirectory("old-cpu-run")], environment: environment)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("FAILED: rank "), output)
        XCTAssertTrue(output.contains("uses instructions this host's CPU (Old CPU on "), output)
        XCTAssertTrue(output.contains("lacks: sse4_2"), output)
        XCTAssertFalse(output.contains("iter 0"), output)
        let (direct, directOutput, _) = try runToEnd(DataParallelTests.buildDirectory + "/kernels-bench", ["--only", "8 8 8 NN"],
                                                     environment: environment)
        XCTAssertEqual(direct, 1, directOutput)
        XCTAssertTrue(directOutput.hasPrefix("Error: this build was compiled for "), directOutput)
        // On this host's own CPU the build runs, and `ddp-train env` says what it was built for.
        let (shown, shownOutput, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-train", ["env"])
        XCTAssertEqual(shown, 0, shownOutput)
        XCTAssertTrue(shownOutput.contains("rank 0: cpu: ") && shownOutput.contains("; build for ")
                      && shownOutput.contains("GEMM micro-kernel "), shownOutput)
    }

    /// `ddp-train sample` writes text from a checkpoint: the requested length, characters of the
    /// vocabulary only, the same text for the same seed and another for another seed.
    func testSampleWritesSeededTextFromACheckpoint() throws {
        let dir = scratchDirectory("sample")
        let train = DataParallelTests.buildDirectory + "/ddp-train"
        let trained = try runToEnd(train, ["train", configsDirectory + "/tiny-gpt.json", "--data-dir", dataDirectory, "--out-dir", dir,
                                          "--set", "max_iters=5", "--set", "eval_interval=1000"])
        XCTAssertEqual(trained.status, 0, trained.output)
        func sample(_ seed: Int) throws -> String {
            let run = try runToEnd(train, ["sample", dir + "/ckpt.safetensors", "--tokens", "80", "--seed", String(seed), "--prompt", "KING"],
                                   environment: ["SWIFT_DDP_DATA": dataDirectory])
            XCTAssertEqual(run.status, 0, run.output)
            return run.output
        }
        let a = try sample(1), b = try sample(1), c = try sample(2)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
        let vocabulary = Set(try String(contentsOfFile: dataDirectory + "/tinyshakespeare.txt", encoding: .utf8).unicodeScalars)
        XCTAssertTrue(a.unicodeScalars.allSatisfy { vocabulary.contains($0) }, a)
        XCTAssertGreaterThanOrEqual(a.unicodeScalars.count, 80, a)
    }

    /// Every script answers --help with its usage and does nothing else (no build, no download, no run).
    func testEveryScriptAnswersHelp() throws {
        let scripts = URL(fileURLWithPath: configsDirectory).deletingLastPathComponent().path + "/scripts"
        let names = try FileManager.default.contentsOfDirectory(atPath: scripts).filter { $0.hasSuffix(".sh") }.sorted()
        XCTAssertGreaterThan(names.count, 10)
        for name in names {
            let started = Date()
            let (status, output, _) = try runToEnd("/bin/bash", [scripts + "/" + name, "--help"], environment: ["SWIFT_DDP_DATA": "/nonexistent/help-must-not-create"])
            XCTAssertEqual(status, 0, "\(name) --help: \(output)")
            XCTAssertGreaterThan(output.split(separator: "\n").count, 1, "\(name) --help printed no usage")
            XCTAssertFalse(output.contains("Traceback") || output.contains("error:"), "\(name) --help: \(output)")
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "\(name) --help did work instead of answering")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/nonexistent/help-must-not-create"))
    }

    /// Users train on their own text (dataset "text", data_path), and the checkpoint carries the
    /// vocabulary: sampling works after the data is gone, from any directory.
    func testOwnTextTrainsAndSamplesWithoutTheData() throws {
        let dir = scratchDirectory("own-text")
        let corpus = dir + "/corpus.txt"
        let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 200) + "ÉÀ€"
        try text.write(toFile: corpus, atomically: true, encoding: .utf8)
        let train = DataParallelTests.buildDirectory + "/ddp-train"
        let trained = try runToEnd(train, ["train", configsDirectory + "/tiny-gpt.json", "--set", "dataset=text", "--set", "data_path=\(corpus)",
                                          "--out-dir", dir + "/out", "--set", "max_iters=3", "--set", "eval_interval=1000"])
        XCTAssertEqual(trained.status, 0, trained.output)
        let expected = String(String.UnicodeScalarView(Set(text.unicodeScalars.map(\.value)).sorted().map { Unicode.Scalar($0)! }))
        XCTAssertEqual(try LoadedCheckpoint(path: dir + "/out/ckpt.safetensors").metadata["vocabulary"], expected)
        try FileManager.default.removeItem(atPath: corpus)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: train)
        process.arguments = ["sample", dir + "/out/ckpt.safetensors", "--tokens", "40", "--prompt", "the "]
        process.currentDirectoryURL = URL(fileURLWithPath: "/")
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, output)
        XCTAssertTrue(output.unicodeScalars.allSatisfy { expected.unicodeScalars.contains($0) || $0 == "\n" }, output)
        // Without data_path the text dataset is refused, naming the key.
        let refused = try runToEnd(train, ["train", configsDirectory + "/tiny-gpt.json", "--set", "dataset=text", "--out-dir", dir + "/x"])
        XCTAssertEqual(refused.status, 2, refused.output)
        XCTAssertTrue(refused.output.contains("config key 'data_path'"), refused.output)
    }
}
