import Foundation
import NN
import TestSupport
import Transport
import XCTest

/// ddp-train started by the schedulers users already have, with the real programs (Open MPI's mpirun,
/// a one-node Slurm from scripts/slurm-local.sh) and with the environments MPICH's Hydra and a Kubeflow
/// PyTorchJob give: each run ends with parameters bitwise equal to `ddp-launch --nproc-per-node 2`'s,
/// because only who starts the ranks differs (same ranks, seeds, algorithms).
final class SchedulerTests: XCTestCase {
    static var buildDirectory: String { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path }
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    var trainer: String { Self.buildDirectory + "/ddp-train" }
    let config = configsDirectory + "/tiny-gpt.json"
    let common = ["--data-dir", dataDirectory, "--set", "max_iters=6", "--set", "eval_interval=1000", "--set", "log_interval=1000",
                  "--set", "checkpoint_interval=0"]
    /// Open MPI refuses root unless told.
    let mpiEnvironment = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]

    nonisolated(unsafe) static var referenceBits: [String: [UInt32]]? // XCTest runs one test at a time
    func reference() throws -> [String: [UInt32]] {
        if let bits = Self.referenceBits { return bits }
        let dir = scratchDirectory("sched-reference")
        let run = try runToEnd(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "2", "--", config] + common + ["--out-dir", dir])
        XCTAssertEqual(run.status, 0, run.output)
        let bits = try parameterBits(dir)
        Self.referenceBits = bits
        return bits
    }

    func parameterBits(_ dir: String) throws -> [String: [UInt32]] {
        try LoadedCheckpoint(path: dir + "/ckpt.safetensors").tensors.mapValues { $0.values.map(\.bitPattern) }
    }

    func assertBitwiseEqualToTheLauncher(_ dir: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try reference(), got = try parameterBits(dir)
        XCTAssertEqual(Set(expected.keys), Set(got.keys), what, file: file, line: line)
        for (name, bits) in expected { XCTAssertEqual(bits, got[name], "\(what): \(name) differs from ddp-launch's", file: file, line: line) }
    }

    func which(_ program: String) -> String? {
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map { "\($0)/\(program)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    func testMpirunStartsTheRanksDirectly() throws {
        guard let mpirun = which("mpirun") else { throw XCTSkip("mpirun not found (apt-get install openmpi-bin; scripts/test.sh installs it as root)") }
        let dir = scratchDirectory("sched-mpirun")
        let run = try runToEnd(mpirun, ["--oversubscribe", "-np", "2", trainer, "train", config] + common + ["--out-dir", dir],
                               environment: mpiEnvironment)
        XCTAssertEqual(run.status, 0, run.output)
        try assertBitwiseEqualToTheLauncher(dir, "mpirun -np 2")
    }

    /// Starts one ddp-train (or ddp-launch) per environment and waits for all.
    func startByHand(_ program: String, _ arguments: [String], _ environments: [[String: String]]) throws -> [(status: Int32, output: String)] {
        let runs = environments.map { env -> (Process, Pipe) in
            let process = Process(), pipe = Pipe()
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = arguments
            // The test's own environment may hold a scheduler's variables: start from a clean one.
            process.environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"].merging(env) { $1 }
            process.standardOutput = pipe; process.standardError = pipe
            return (process, pipe)
        }
        for (process, _) in runs { try process.run() }
        return runs.map { process, pipe in
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: data, as: UTF8.self))
        }
    }

    func testHydraPMIAndKubeflowEnvironments() throws {
        let port = String(20000 + Int(getpid() % 10000))
        // MPICH / Intel MPI's Hydra: PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS; no job id, so MASTER_PORT.
        var dir = scratchDirectory("sched-pmi")
        var runs = try startByHand(trainer, ["train", config] + common + ["--out-dir", dir], (0..<2).map {
            ["PMI_RANK": "\($0)", "PMI_SIZE": "2", "MPI_LOCALRANKID": "\($0)", "MPI_LOCALNRANKS": "2", "MASTER_PORT": port]
        })
        for run in runs { XCTAssertEqual(run.status, 0, run.output) }
        try assertBitwiseEqualToTheLauncher(dir, "PMI")
        // A PyTorchJob with one rank per pod: RANK/WORLD_SIZE count pods, KUBERNETES_SERVICE_HOST says where we are.
        dir = scratchDirectory("sched-kubeflow")
        let secret = String(repeating: "5a", count: 16)
        let pod = ["WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "KUBERNETES_SERVICE_HOST": "10.96.0.1", "SWIFT_DDP_SECRET": secret]
        runs = try startByHand(trainer, ["train", config] + common + ["--out-dir", dir], (0..<2).map { pod.merging(["RANK": "\($0)"]) { $1 } })
        for run in runs { XCTAssertEqual(run.status, 0, run.output) }
        try assertBitwiseEqualToTheLauncher(dir, "Kubeflow, one rank per pod")
        // The same pods, each running ddp-launch --nproc-per-node 1: pods become the launcher's nodes.
        dir = scratchDirectory("sched-kubeflow-launch")
        runs = try startByHand(Self.buildDirectory + "/ddp-launch", ["--nproc-per-node", "1", "--", config] + common + ["--out-dir", dir],
                               (0..<2).map { pod.merging(["RANK": "\($0)"]) { $1 } })
        for run in runs {
            XCTAssertEqual(run.status, 0, run.output)
            XCTAssertTrue(run.output.contains("Kubeflow PyTorchJob: pod"), run.output)
        }
        try assertBitwiseEqualToTheLauncher(dir, "Kubeflow, ddp-launch in each pod")
    }

    /// Rank 0 hosts the store under another launcher: a port already taken is one line naming the port
    /// and the variable it came from (and, from a job id, the derivation), not a hang.
    func testBusyMasterPortIsNamed() throws {
        // A port in Lightning's range (15000 + four digits), so that a Slurm job id can point at it too.
        var taken: Listener?
        for _ in 0..<50 where taken == nil { taken = try? Listener(host: "127.0.0.1", port: 15000 + Int.random(in: 0..<10000)) }
        guard let taken else { throw XCTSkip("no free port in 15000...24999") }
        defer { taken.close() }
        let pmi = ["PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2", "SWIFT_DDP_TIMEOUT": "5"]
        var run = try startByHand(trainer, ["train", config] + common, [pmi.merging(["MASTER_PORT": String(taken.port)]) { $1 }])[0]
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.output.contains("cannot host the rendezvous store on port \(taken.port) (MASTER_PORT)"), run.output)
        XCTAssertEqual(run.output.split(separator: "\n").filter { $0.lowercased().contains("error") }.count, 1, run.output)
        // Under Slurm without MASTER_PORT the port comes from the job id: 15000 + its last four digits.
        let job = "77" + String(format: "%04d", taken.port - 15000)
        let slurm = ["SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                     "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_ID": job, "SWIFT_DDP_TIMEOUT": "5"]
        run = try startByHand(trainer, ["train", config] + common, [slurm])[0]
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.output.contains("port \(taken.port) (15000 + the last 4 digits of the job id (\(job))"), run.output)
    }

    /// Brings up the one-node Slurm (installing it as root when missing), or skips saying why.
    func slurm() throws -> [String: String] {
        guard which("bash") != nil else { throw XCTSkip("no bash") }
        let up = try runToEnd("/bin/bash", [Self.root + "/scripts/slurm-local.sh", "up"])
        guard up.status == 0 else { throw XCTSkip("a local Slurm cannot start here: \(up.output.suffix(400))") }
        let conf = up.output.components(separatedBy: "SLURM_CONF=").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return ["SLURM_CONF": conf]
    }

    func testSrunAndTheSbatchExampleOnALocalSlurm() throws {
        let env = try slurm()
        guard let srun = which("srun"), let sbatch = which("sbatch") else { throw XCTSkip("srun/sbatch not on PATH") }
        var dir = scratchDirectory("sched-srun")
        let run = try runToEnd(srun, ["-n", "2", trainer, "train", config] + common + ["--out-dir", dir], environment: env)
        XCTAssertEqual(run.status, 0, run.output)
        try assertBitwiseEqualToTheLauncher(dir, "srun -n 2")
        // The example a user copies, on this one node (options on the command line override its #SBATCH lines).
        dir = scratchDirectory("sched-sbatch")
        let out = dir + "/slurm.out"
        let batch = try runToEnd(sbatch, ["--wait", "--nodes=1", "--ntasks-per-node=2", "--output=\(out)", "--chdir=\(Self.root)",
                                          Self.root + "/scripts/slurm/train.sbatch", config] + common + ["--out-dir", dir],
                                 environment: env.merging(["SWIFT_DDP_ROOT": Self.root, "PATH": Self.buildDirectory + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "")]) { $1 })
        let log = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        XCTAssertEqual(batch.status, 0, batch.output + log)
        try assertBitwiseEqualToTheLauncher(dir, "sbatch scripts/slurm/train.sbatch")
    }

    /// kill -9 of rank 1 under srun and under mpirun: rank 0 stops naming it, the scheduler reports a
    /// failed step (non-zero exit, the task named), and no rank is left running.
    func testKilledRankUnderSrunAndMpirun() throws {
        var schedulers: [(String, [String], [String: String], String)] = []
        if let mpirun = which("mpirun") {
            schedulers.append((mpirun, ["--oversubscribe", "-np", "2"], mpiEnvironment, "OMPI_COMM_WORLD_RANK=1"))
        }
        if let env = try? slurm(), let srun = which("srun") { schedulers.append((srun, ["-n", "2"], env, "SLURM_PROCID=1")) }
        guard !schedulers.isEmpty else { throw XCTSkip("neither mpirun nor a local Slurm is available") }
        for (program, arguments, env, rankOne) in schedulers {
            let tag = "SWIFT_DDP_TEST_TAG=\(UUID().uuidString)"
            let (process, handle, head) = try startLauncher(program, arguments + [trainer, "train", config, "--data-dir", dataDirectory,
                "--out-dir", scratchDirectory("sched-kill"), "--set", "max_iters=100000", "--set", "log_interval=1", "--set", "eval_interval=100000"],
                until: "iter 5/", environment: env.merging([String(tag.split(separator: "=")[0]): String(tag.split(separator: "=")[1])]) { $1 })
            let ranks = processes(withVariable: tag).filter { pid in
                ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("ddp-train")
            }
            let victim = ranks.first { pid in
                (FileManager.default.contents(atPath: "/proc/\(pid)/environ") ?? Data()).split(separator: 0).contains { Array($0) == Array(rankOne.utf8) }
            }
            guard let victim else { process.terminate(); XCTFail("\(program): no rank 1 among \(ranks):\n\(head)"); continue }
            kill(victim, SIGKILL)
            let output = head + String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            XCTAssertNotEqual(process.terminationStatus, 0, "\(program) reports the failed step:\n\(output)")
            XCTAssertTrue(output.contains("with rank 1"), "\(program): rank 0 names rank 1:\n\(output)")
            let left = processes(withVariable: tag).filter { pid in ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").contains("ddp-train") }
            XCTAssertEqual(left, [], "\(program): ranks left running")
        }
    }
}
