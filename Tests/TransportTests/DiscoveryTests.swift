import Foundation
import Launch
import Rendezvous
import TestSupport
import Topology
import XCTest

/// Slurm's compressed lists, and who started a rank, read from fixtures of each launcher's variables.
final class DiscoveryTests: XCTestCase {
    let secret = String(repeating: "ab", count: 16)

    func testHostlistsExpandLikeScontrol() throws {
        XCTAssertEqual(try expandHostlist("tux[0-5,12,20-25],login1"),
                       (0...5).map { "tux\($0)" } + ["tux12"] + (20...25).map { "tux\($0)" } + ["login1"])
        XCTAssertEqual(try expandHostlist("node[001-003,010]"), ["node001", "node002", "node003", "node010"])
        XCTAssertEqual(try expandHostlist("r[1-2]n[08-09]"), ["r1n08", "r1n09", "r2n08", "r2n09"])
        XCTAssertEqual(try expandHostlist("vm"), ["vm"])
        XCTAssertEqual(try expandHostlist("a,b[1,3],c"), ["a", "b1", "b3", "c"])
        for bad in ["tux[0-5", "tux0-5]", "tux[a-b]", "tux[5-1]", "tux[[1]]"] {
            XCTAssertThrowsError(try expandHostlist(bad), bad)
        }
    }

    func testTasksPerNodeExpandRepeats() throws {
        XCTAssertEqual(try expandTasksPerNode("2(x3),1"), [2, 2, 2, 1])
        XCTAssertEqual(try expandTasksPerNode("4"), [4])
        XCTAssertEqual(try expandTasksPerNode("1,2(x2)"), [1, 2, 2])
        for bad in ["", "2(3)", "2(x)", "x", "0", "2(x0)"] { XCTAssertThrowsError(try expandTasksPerNode(bad), bad) }
    }

    func testSlurmAcrossNodes() throws {
        let env = ["SLURM_PROCID": "7", "SLURM_NTASKS": "7", "SLURM_LOCALID": "0", "SLURM_NODEID": "3", "SLURM_STEP_ID": "0",
                   "SLURM_JOB_ID": "123456", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_STEP_NODELIST": "tux[0-2,12]",
                   "SWIFT_DDP_SECRET": secret]
        XCTAssertThrowsError(try WorkerEnvironment.read(env), "rank 7 of 7") { XCTAssertEqual(($0 as? EnvironmentError)?.variable, "SLURM_PROCID") }
        var fixed = env
        fixed["SLURM_NTASKS"] = "8"; fixed["SLURM_STEP_TASKS_PER_NODE"] = "2(x3),2"; fixed["SLURM_LOCALID"] = "1"
        let w = try WorkerEnvironment.read(fixed)
        XCTAssertEqual(w.discovery.launcher, .slurm)
        XCTAssertEqual([w.rank, w.worldSize, w.localRank, w.localWorldSize, w.groupRank], [7, 8, 1, 2, 3])
        XCTAssertEqual(w.masterAddress, "tux0")
        XCTAssertEqual(w.masterPort, 15000 + 3456, "Lightning's rule: 15000 + the job id's last four digits")
        XCTAssertTrue(w.hostsStore == false && w.discovery.rankZeroHostsStore)
        XCTAssertTrue(w.discovery.lines.contains("master address: tux0 (from first host of SLURM_STEP_NODELIST)"), "\(w.discovery.lines)")
        // MASTER_PORT wins over the derived port.
        fixed["MASTER_PORT"] = "29400"
        XCTAssertEqual(try WorkerEnvironment.read(fixed).masterPort, 29400)
    }

    func testMPIAndPMIAndKubeflowAndTorchrun() throws {
        let ompi = try WorkerEnvironment.read(["OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                                               "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1897725953"])
        XCTAssertEqual(ompi.discovery.launcher, .openMPI)
        XCTAssertEqual([ompi.rank, ompi.worldSize, ompi.localRank, ompi.localWorldSize], [1, 2, 1, 2])
        XCTAssertEqual(ompi.masterAddress, "127.0.0.1", "one host: loopback")
        XCTAssertEqual(ompi.masterPort, 15000 + 5953)
        XCTAssertEqual(ompi.secretSource, "none (one host: derived from the job id)")

        let pmi = try WorkerEnvironment.read(["PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2",
                                              "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "SWIFT_DDP_SECRET": secret])
        XCTAssertEqual(pmi.discovery.launcher, .pmi)
        XCTAssertTrue(pmi.hostsStore)
        XCTAssertEqual(pmi.secret, Array(repeating: 0xab, count: 16))
        // Across hosts without a secret: refused unless insecure; without MASTER_ADDR: refused.
        var across = ["PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"]
        XCTAssertThrowsError(try WorkerEnvironment.read(across)) { XCTAssertEqual(($0 as? EnvironmentError)?.variable, "SWIFT_DDP_SECRET") }
        across["SWIFT_DDP_INSECURE"] = "1"
        XCTAssertTrue(try WorkerEnvironment.read(across).secretSource.contains("SWIFT_DDP_INSECURE"))
        across["MASTER_ADDR"] = nil
        XCTAssertThrowsError(try WorkerEnvironment.read(across)) { XCTAssertEqual(($0 as? EnvironmentError)?.variable, "MASTER_ADDR") }

        let pod = try WorkerEnvironment.read(["RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
                                              "KUBERNETES_SERVICE_HOST": "10.96.0.1", "SWIFT_DDP_SECRET": secret])
        XCTAssertEqual(pod.discovery.launcher, .kubeflow)
        XCTAssertEqual([pod.rank, pod.worldSize, pod.localRank, pod.localWorldSize], [1, 2, 0, 1])
        XCTAssertEqual(pod.masterPort, 23456)

        let torchrun = try WorkerEnvironment.read(["RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"])
        XCTAssertEqual(torchrun.discovery.launcher, .torchrun)
        XCTAssertEqual(torchrun.masterPort, 29501, "torchrun's agent holds MASTER_PORT")

        // Our launcher's children inherit the scheduler's variables: ours win.
        let nested = try WorkerEnvironment.read(["RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "SWIFT_DDP_STORE_PORT": "4000",
                                                 "MASTER_PORT": "4001", "SWIFT_DDP_SECRET": secret, "SLURM_PROCID": "0", "SLURM_STEP_ID": "0",
                                                 "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"])
        XCTAssertEqual(nested.discovery.launcher, .swiftDDP)
        XCTAssertEqual([nested.rank, nested.masterPort, nested.programPort], [1, 4000, 4001])
    }

    func testPartialOrBadEnvironmentsNameTheVariables() {
        func variable(_ env: [String: String]) -> String? {
            do { _ = try WorkerEnvironment.read(env); return nil } catch { return (error as? EnvironmentError)?.variable }
        }
        XCTAssertEqual(variable(["RANK": "0"]), "WORLD_SIZE")
        XCTAssertEqual(variable(["OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"]), "OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE")
        XCTAssertEqual(variable(["SLURM_PROCID": "0", "SLURM_STEP_ID": "0"]), "SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID")
        XCTAssertEqual(variable(["SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                                 "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "tux[1-"]), "SLURM_STEP_NODELIST")
        XCTAssertEqual(variable(["PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"]), "MASTER_PORT",
                       "no job id to derive a port from")
        XCTAssertEqual(variable(["SWIFT_DDP_SPIN_US": "-1"]), "SWIFT_DDP_SPIN_US")
        XCTAssertEqual(variable(["SWIFT_DDP_BIND_MEMORY": "yes"]), "SWIFT_DDP_BIND_MEMORY")
        // A secret file others can read is refused.
        let path = scratchFile("secret")
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(secret.utf8), attributes: [.posixPermissions: 0o644]))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let mpi = ["OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                   "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_PORT": "29500", "SWIFT_DDP_SECRET_FILE": path]
        XCTAssertEqual(variable(mpi), "SWIFT_DDP_SECRET_FILE")
        chmod(path, 0o600)
        XCTAssertEqual(try WorkerEnvironment.read(mpi).secret, Array(repeating: 0xab, count: 16))
    }

    /// What the launcher writes is what a rank reads: every field survives the trip.
    func testLauncherToRankRoundTrip() throws {
        var spec = LaunchSpec(command: ["x"], localWorkers: 2, jobID: "job-rt", secret: Array(0..<16))
        spec.nodes = 3; spec.nodeRank = 2; spec.masterAddress = "10.1.2.3"; spec.programPort = 4001; spec.restartCount = 1
        spec.timeoutSeconds = 12.5; spec.authenticateFrames = true
        spec.placements = [RankPlacement(localRank: 0, node: 0, cpus: [0], bindMemory: true), RankPlacement(localRank: 1, node: 1, cpus: [2, 3], bindMemory: false)]
        let written = spec.worker(local: 1, port: 4000)
        var read = try WorkerEnvironment.read(spec.environment(local: 1, port: 4000, base: [:]))
        XCTAssertEqual(read.discovery.launcher, .swiftDDP)
        XCTAssertEqual([read.rank, read.worldSize, read.localRank, read.localWorldSize, read.groupRank, read.masterPort], [5, 6, 1, 2, 2, 4000])
        XCTAssertEqual(read.bindCPUs, "2-3")
        read.discovery = written.discovery; read.secretSource = written.secretSource
        XCTAssertEqual(read, written)
        var knobs = written
        knobs.spinMicroseconds = 25; knobs.chunkBytes = 64 << 10; knobs.tuningPath = "/t.json"; knobs.numaBind = "core"; knobs.interface = "eth0"
        var back = try WorkerEnvironment.read(knobs.variables())
        back.discovery = knobs.discovery; back.secretSource = knobs.secretSource
        XCTAssertEqual(back, knobs)
    }

    func testKubeflowPodsAreTheLaunchersNodes() throws {
        XCTAssertNil(try kubeflowPod(["RANK": "1", "WORLD_SIZE": "2"]), "not in Kubernetes")
        let pod = try kubeflowPod(["KUBERNETES_SERVICE_HOST": "10.96.0.1", "RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "m", "MASTER_PORT": "23456"])
        XCTAssertEqual(pod?.pods, 3); XCTAssertEqual(pod?.index, 1); XCTAssertEqual(pod?.masterPort, 23456)
        XCTAssertThrowsError(try kubeflowPod(["KUBERNETES_SERVICE_HOST": "x", "RANK": "1", "WORLD_SIZE": "3"]))
    }
}
