import ArgumentParser
import Foundation
import NN
import TestSupport
import Transport

/// Fault injection on loopback with real processes through the launcher: each scenario is run for some
/// trials and judged on what users rely on: the job stops (or carries on, for intruders) within the
/// timeout with a message naming the cause, no process is left, no partial checkpoint is ever loaded,
/// and the last good checkpoint still resumes. Prints a Markdown table (docs/reliability.md).
@main
struct FaultSuite: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fault-suite", abstract: "Fault-injection trials on loopback.")
    @Option(help: "Trials of kill -9 of a random rank at a random time.") var killTrials = 20
    @Option(help: "Trials of each other scenario.") var trials = 3
    @Option(help: "Repository root (configs/, data/).") var root = "."
    @Option(help: "Random seed for victims and delays.") var seed: UInt64 = 1

    func run() throws {
        let suite = Suite(root: URL(fileURLWithPath: root).standardizedFileURL.path, seed: seed)
        defer { try? FileManager.default.removeItem(atPath: suite.workDirectory) }
        var rows: [Row] = []
        rows.append(try suite.repeatScenario("kill -9 of a random rank at a random time (3 ranks, training)", killTrials, suite.killRandomRank))
        rows.append(try suite.repeatScenario("SIGSTOP of a rank (timeout 3 s)", trials, suite.stopRank))
        rows.append(try suite.repeatScenario("peer sends 4 KiB of garbage to the store", trials) { try suite.intruder(garbage: true, $0) })
        rows.append(try suite.repeatScenario("peer connects to the store and says nothing", trials) { try suite.intruder(garbage: false, $0) })
        rows.append(try suite.repeatScenario("store dies (launcher SIGKILLed, store in it)", trials, suite.killLauncher))
        rows.append(try suite.repeatScenario("disk full while writing a checkpoint", 1) { try suite.checkpointWriteFails(readOnly: false, $0) })
        rows.append(try suite.repeatScenario("read-only file system while writing a checkpoint", 1) { try suite.checkpointWriteFails(readOnly: true, $0) })
        print("| fault | trials | outcome | time to detection (median, min–max) | what the user sees |")
        print("|---|---|---|---|---|")
        for row in rows { print(row.markdown) }
        if rows.contains(where: { $0.failures > 0 }) { throw ExitCode(1) }
    }
}

struct Row {
    var name: String, trials: Int, failures: Int, times: [Double], example: String, problems: [String]
    var markdown: String {
        let sorted = times.sorted()
        let time = sorted.isEmpty ? "–" : String(format: "%.2f s (%.2f–%.2f)", sorted[sorted.count / 2], sorted.first!, sorted.last!)
        let outcome = failures == 0 ? "all passed" : "\(failures) FAILED: " + problems.prefix(3).joined(separator: "; ")
        return "| \(name) | \(trials) | \(outcome) | \(time) | \(example.replacingOccurrences(of: "|", with: "\\|")) |"
    }
}

/// One trial's verdict: seconds from the fault to detection, the line a user sees, problems (empty: passed).
struct Outcome { var seconds: Double?; var message: String; var problems: [String] }

final class Suite {
    let root: String
    let build = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
    /// Every trial's output directory lives here; removed when the suite ends.
    let workDirectory = NSTemporaryDirectory() + "fault-suite-\(getpid())"
    var state: UInt64
    init(root: String, seed: UInt64) { self.root = root; state = seed | 1 }
    func random() -> Double { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return Double(state % 1_000_000) / 1_000_000 }

    func repeatScenario(_ name: String, _ count: Int, _ body: (Int) throws -> Outcome) throws -> Row {
        var row = Row(name: name, trials: count, failures: 0, times: [], example: "", problems: [])
        for trial in 0..<count {
            let outcome = try body(trial)
            if let s = outcome.seconds { row.times.append(s) }
            if row.example.isEmpty { row.example = outcome.message }
            if !outcome.problems.isEmpty { row.failures += 1; row.problems += outcome.problems.map { "trial \(trial): \($0)" } }
            FileHandle.standardError.write(Data("[fault-suite] \(name) #\(trial): \(outcome.problems.isEmpty ? "ok" : outcome.problems.joined(separator: "; "))\n".utf8))
        }
        return row
    }

    /// A launcher whose output is collected on a thread; `until` blocks until a marker appears.
    final class Job: @unchecked Sendable {
        let process = Process()
        let lock = NSLock()
        var text = ""
        init(_ arguments: [String], build: String) throws {
            process.executableURL = URL(fileURLWithPath: build + "/ddp-launch")
            process.arguments = arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let handle = pipe.fileHandleForReading
            Thread.detachNewThread { [self] in
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    lock.lock(); text += String(decoding: data, as: UTF8.self); lock.unlock()
                }
            }
        }
        var output: String { lock.lock(); defer { lock.unlock() }; return text }
        func until(_ marker: String, seconds: Double = 60) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while !output.contains(marker) && process.isRunning && Date() < deadline { usleep(10_000) }
            return output.contains(marker)
        }
        /// Seconds until the launcher exits (nil: still running after `seconds`, then killed).
        func exit(within seconds: Double) -> Double? {
            let start = Date()
            while process.isRunning && Date().timeIntervalSince(start) < seconds { usleep(5_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit(); return nil }
            process.waitUntilExit()
            usleep(50_000) // let the reader thread drain the pipe
            return Date().timeIntervalSince(start)
        }
        var pids: [Int32] { launcherRankPIDs(output) }
        func line(containing text: String) -> String {
            output.split(separator: "\n").first { $0.contains(text) }.map(String.init) ?? ""
        }
    }

    var tinyGPT: [String] {
        [root + "/configs/tiny-gpt.json", "--data-dir", root + "/data", "--set", "max_iters=100000000", "--set", "eval_interval=100000000",
         "--set", "log_interval=1", "--set", "checkpoint_interval=5"]
    }

    func freshDirectory(_ name: String) -> String {
        let path = workDirectory + "/" + name
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The checkpoint in `dir` (if any) must load and resume for one more iteration in one process.
    func checkpointResumes(_ dir: String) -> [String] {
        let path = dir + "/ckpt.safetensors"
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        guard let loaded = try? LoadedCheckpoint(path: path), let iteration = Int(loaded.metadata["iteration"] ?? "") else {
            return ["checkpoint \(path) does not load (partial?)"]
        }
        let resume = Process()
        resume.executableURL = URL(fileURLWithPath: build + "/ddp-train")
        resume.arguments = ["train", root + "/configs/tiny-gpt.json", "--data-dir", root + "/data", "--out-dir", dir, "--resume",
                            "--set", "max_iters=\(iteration + 1)", "--set", "eval_interval=100000000"]
        resume.standardOutput = FileHandle.nullDevice
        resume.standardError = FileHandle.nullDevice
        guard (try? resume.run()) != nil else { return ["cannot start ddp-train"] }
        resume.waitUntilExit()
        return resume.terminationStatus == 0 ? [] : ["resume from the checkpoint at iteration \(iteration) failed"]
    }

    func killRandomRank(_ trial: Int) throws -> Outcome {
        let dir = freshDirectory("kill\(trial)")
        let job = try Job(["--nproc-per-node", "3", "--timeout", "10", "--"] + tinyGPT + ["--out-dir", dir], build: build)
        guard job.until("iter 1/") else { return Outcome(seconds: nil, message: "", problems: ["never started: \(job.output.suffix(300))"]) }
        usleep(useconds_t(200_000 + random() * 1_800_000))
        let pids = job.pids
        let victim = Int(random() * Double(pids.count)) % max(pids.count, 1)
        guard victim < pids.count else { return Outcome(seconds: nil, message: "", problems: ["no pids"]) }
        kill(pids[victim], SIGKILL)
        let seconds = job.exit(within: 30)
        var problems: [String] = []
        if seconds == nil { problems.append("launcher still running 30 s after the kill") }
        if job.process.terminationStatus == 0 { problems.append("launcher exited 0") }
        if !job.output.contains("FAILED: rank \(victim) (pid \(pids[victim])") { problems.append("root cause not rank \(victim)") }
        if !survivors(ofLauncher: job.process.processIdentifier).isEmpty { problems.append("orphans") }
        problems += checkpointResumes(dir)
        return Outcome(seconds: seconds, message: job.line(containing: "FAILED:").replacingOccurrences(of: "[launcher] ", with: ""), problems: problems)
    }

    func stopRank(_ trial: Int) throws -> Outcome {
        let job = try Job(["--nproc-per-node", "2", "--timeout", "3", "--", "collective-check", "--loop", "--counts", "10000"], build: build)
        guard job.until("READY") else { return Outcome(seconds: nil, message: "", problems: ["never started"]) }
        let pids = job.pids
        kill(pids[1], SIGSTOP)
        let seconds = job.exit(within: 30)
        var problems: [String] = []
        if seconds == nil { problems.append("launcher still running 30 s after SIGSTOP") }
        let blame = job.line(containing: "ERROR:")
        if !(blame.contains("rank 1") && blame.contains("timed out")) { problems.append("no timeout naming rank 1: \(blame)") }
        if !survivors(ofLauncher: job.process.processIdentifier).isEmpty { problems.append("orphans") }
        return Outcome(seconds: seconds, message: blame.replacingOccurrences(of: "[rank 0] ", with: ""), problems: problems)
    }

    /// Connects to a running job's store with no secret: garbage or silence. The job must not notice;
    /// the store must refuse and log it. Detection: from the connection to the refusal in the log.
    func intruder(garbage: Bool, _ trial: Int) throws -> Outcome {
        let port = 31000 + Int(getpid() % 1000) * 4 + trial % 4
        let job = try Job(["--nproc-per-node", "2", "--timeout", "3", "--master-port", String(port), "--",
                           "collective-check", "--loop", "--counts", "10000"], build: build)
        guard job.until("READY") else { return Outcome(seconds: nil, message: "", problems: ["never started: \(job.output.suffix(300))"]) }
        let start = Date()
        let fd = try Socket.connect(host: "127.0.0.1", port: port, deadline: Deadline(seconds: 5), peer: PeerDescription(host: "127.0.0.1", port: port),
                                    operation: "fault-suite intruder")
        if garbage {
            var bytes = [UInt8](repeating: 0, count: 4096)
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: Int(random() * 256)) }
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        var problems: [String] = []
        let refused = job.until("store: refused", seconds: 15)
        let seconds = Date().timeIntervalSince(start)
        close(fd)
        if !refused { problems.append("no refusal logged") }
        usleep(300_000)
        if !job.process.isRunning || job.output.contains("ERROR") { problems.append("the job was disturbed: \(job.output.suffix(300))") }
        kill(job.process.processIdentifier, SIGTERM)
        _ = job.exit(within: 15)
        if !survivors(ofLauncher: job.process.processIdentifier).isEmpty { problems.append("orphans") }
        return Outcome(seconds: refused ? seconds : nil, message: job.line(containing: "store: refused").replacingOccurrences(of: "[launcher] ", with: ""),
                       problems: problems)
    }

    func killLauncher(_ trial: Int) throws -> Outcome {
        let job = try Job(["--nproc-per-node", "3", "--timeout", "10", "--", "collective-check", "--loop", "--counts", "10000"], build: build)
        guard job.until("READY") else { return Outcome(seconds: nil, message: "", problems: ["never started"]) }
        let launcher = job.process.processIdentifier
        let start = Date()
        kill(launcher, SIGKILL)
        // Detection here is the ranks going: PR_SET_PDEATHSIG kills them when the launcher (and its store) dies.
        let alive = survivors(ofLauncher: launcher)
        let seconds = Date().timeIntervalSince(start)
        job.process.waitUntilExit()
        return Outcome(seconds: alive.isEmpty ? seconds : nil, message: "every rank killed by PR_SET_PDEATHSIG",
                       problems: alive.isEmpty ? [] : ["ranks \(alive) outlived the launcher"])
    }

    /// out_dir on a small tmpfs: full after the first checkpoint, or remounted read-only after it.
    /// The write must fail with an error naming the file and the reason, and the first checkpoint must
    /// still load and resume.
    func checkpointWriteFails(readOnly: Bool, _ trial: Int) throws -> Outcome {
        let mountPoint = freshDirectory(readOnly ? "ro" : "full")
        // Size one checkpoint first, then give the file system room for it and a third more (read-only:
        // for two, since the run before the remount writes the best checkpoint beside the last one).
        let probe = freshDirectory("probe")
        let sizing = try Job(["--nproc-per-node", "1", "--"] + tinyGPT + ["--out-dir", probe, "--set", "max_iters=1"], build: build)
        _ = sizing.exit(within: 60)
        let size = ((try? FileManager.default.attributesOfItem(atPath: probe + "/ckpt.safetensors"))?[.size] as? Int) ?? 400_000
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        let room = size * (readOnly ? 7 : 4) / 3
        mount.arguments = ["-t", "tmpfs", "-o", "size=\(room / 4096 * 4096 + 8192)", "tmpfs", mountPoint]
        try mount.run(); mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { return Outcome(seconds: nil, message: "", problems: ["cannot mount a tmpfs (needs root)"]) }
        defer { let u = Process(); u.executableURL = URL(fileURLWithPath: "/bin/umount"); u.arguments = ["-l", mountPoint]; try? u.run(); u.waitUntilExit() }
        var arguments = ["--nproc-per-node", "2", "--timeout", "10", "--"] + tinyGPT + ["--out-dir", mountPoint]
        if readOnly {
            // First a good checkpoint, then the file system goes read-only under a resumed run.
            let first = try Job(["--nproc-per-node", "1", "--"] + tinyGPT + ["--out-dir", mountPoint, "--set", "max_iters=5"], build: build)
            _ = first.exit(within: 60)
            let remount = Process()
            remount.executableURL = URL(fileURLWithPath: "/bin/mount")
            remount.arguments = ["-o", "remount,ro", mountPoint]
            try remount.run(); remount.waitUntilExit()
            arguments.append("--resume")
        }
        let job = try Job(arguments, build: build)
        let seconds = job.exit(within: 60)
        var problems: [String] = []
        // Read-only: the trainer checks out_dir is writable before training (a config error naming
        // out_dir), rather than failing at its first checkpoint.
        let cause = job.line(containing: readOnly ? "Read-only file system" : "error: checkpoint")
        if job.process.terminationStatus == 0 { problems.append("the job did not fail") }
        if !(cause.contains(readOnly ? "Read-only file system" : "No space left on device")) { problems.append("no clear cause: \(job.output.suffix(400))") }
        if !survivors(ofLauncher: job.process.processIdentifier).isEmpty { problems.append("orphans") }
        if FileManager.default.fileExists(atPath: mountPoint + "/ckpt.safetensors.tmp") { problems.append("partial temp file left") }
        if !FileManager.default.fileExists(atPath: mountPoint + "/ckpt.safetensors") { problems.append("no good checkpoint left") }
        let copy = freshDirectory("copy\(readOnly)")
        try? FileManager.default.copyItem(atPath: mountPoint + "/ckpt.safetensors", toPath: copy + "/ckpt.safetensors")
        problems += checkpointResumes(copy)
        let message = cause.components(separatedBy: "] ").dropFirst().joined(separator: "] ")
            .replacingOccurrences(of: NSTemporaryDirectory(), with: "/tmp/")
        return Outcome(seconds: seconds, message: message, problems: problems)
    }
}
