import Foundation
import Rendezvous
import Transport
import XCTest

/// Runs N real rank processes of a built executable on loopback, as a launcher would: a store in this
/// process on a kernel-chosen port, the torchrun environment and a fresh job secret for each child.
struct LocalCluster {
    struct Outcome {
        var status: Int32
        var output: String
        var signaled: Bool
    }

    static var buildDirectory: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
    }

    let worldSize: Int
    let secret = randomBytes(16)
    let jobID = "test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let store: StoreServer

    init(worldSize: Int) throws {
        self.worldSize = worldSize
        store = try StoreServer(host: "127.0.0.1", port: 0,
                                identity: JobIdentity(jobID: jobID, worldSize: worldSize, secret: secret))
    }

    func environment(rank: Int, extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["RANK"] = String(rank); env["LOCAL_RANK"] = String(rank)
        env["WORLD_SIZE"] = String(worldSize); env["LOCAL_WORLD_SIZE"] = String(worldSize)
        env["MASTER_ADDR"] = "127.0.0.1"; env["MASTER_PORT"] = String(store.port)
        env["SWIFT_DDP_SECRET"] = hexString(secret); env["SWIFT_DDP_JOB_ID"] = jobID
        for (k, v) in extra { env[k] = v }
        return env
    }

    /// Starts every rank (or the ones listed) and returns the processes with their output pipes.
    func start(_ executable: String, _ arguments: [String], ranks: [Int]? = nil,
               extra: [String: String] = [:]) throws -> [(Process, Pipe)] {
        try (ranks ?? Array(0..<worldSize)).map { rank in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: LocalCluster.buildDirectory + "/" + executable)
            process.arguments = arguments
            process.environment = environment(rank: rank, extra: extra)
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            return (process, pipe)
        }
    }

    /// Waits for every process (killing all after `timeout` seconds) and collects status and output.
    static func wait(_ processes: [(Process, Pipe)], timeout: Double) -> [Outcome] {
        let deadline = Deadline(seconds: timeout)
        final class Outputs: @unchecked Sendable {
            var data: [Data]
            let lock = NSLock()
            init(_ n: Int) { data = Array(repeating: Data(), count: n) }
        }
        let outputs = Outputs(processes.count)
        let group = DispatchGroup()
        for (i, (_, pipe)) in processes.enumerated() {
            group.enter()
            let handle = pipe.fileHandleForReading
            DispatchQueue.global().async {
                let data = handle.readDataToEndOfFile()
                outputs.lock.lock(); outputs.data[i] = data; outputs.lock.unlock()
                group.leave()
            }
        }
        while processes.contains(where: { $0.0.isRunning }) && !deadline.hasPassed { usleep(10_000) }
        for (p, _) in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for (p, _) in processes { p.waitUntilExit() }
        _ = group.wait(timeout: .now() + 5)
        return processes.enumerated().map { i, entry in
            outputs.lock.lock(); defer { outputs.lock.unlock() }
            return Outcome(status: entry.0.terminationStatus, output: String(decoding: outputs.data[i], as: UTF8.self),
                           signaled: entry.0.terminationReason == .uncaughtSignal)
        }
    }
}
