import Foundation
import TestSupport
import Rendezvous
import Transport
import XCTest

/// Runs N real rank processes of a built executable on loopback, as a launcher would: a store in this
/// process on a kernel-chosen port, our launcher's environment (SWIFT_DDP_STORE_PORT names the store
/// this process hosts; without it rank 0 would host one itself) and a fresh job secret for each child.
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
        env["MASTER_ADDR"] = "127.0.0.1"; env["SWIFT_DDP_STORE_PORT"] = String(store.port); env["MASTER_PORT"] = "0"
        env["SWIFT_DDP_SECRET"] = hexString(secret); env["SWIFT_DDP_JOB_ID"] = jobID
        for (k, v) in extra { env[k] = v }
        return env
    }

    /// Starts every rank (or the ones listed); their output is collected as it arrives.
    func start(_ executable: String, _ arguments: [String], ranks: [Int]? = nil,
               extra: [String: String] = [:]) throws -> Running {
        let ranks = ranks ?? Array(0..<worldSize)
        let running = Running(count: ranks.count)
        for (slot, rank) in ranks.enumerated() {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: LocalCluster.buildDirectory + "/" + executable)
            process.arguments = arguments
            process.environment = environment(rank: rank, extra: extra)
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            running.processes.append(process)
            let handle = pipe.fileHandleForReading
            running.group.enter()
            Thread.detachNewThread {
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    running.lock.lock(); running.outputs[slot].append(data); running.lock.unlock()
                }
                running.group.leave()
            }
        }
        return running
    }

    final class Running: @unchecked Sendable {
        var processes: [Process] = []
        var outputs: [Data]
        let lock = NSLock()
        let group = DispatchGroup()
        init(count: Int) { outputs = Array(repeating: Data(), count: count) }

        func output(_ slot: Int) -> String {
            lock.lock(); defer { lock.unlock() }
            return String(decoding: outputs[slot], as: UTF8.self)
        }

        /// Waits until every listed slot has printed `text` (or the timeout passes).
        @discardableResult
        func waitForOutput(_ text: String, slots: [Int], timeout: Double) -> Bool {
            let deadline = Deadline(seconds: timeout)
            while !deadline.hasPassed {
                if slots.allSatisfy({ output($0).contains(text) }) { return true }
                usleep(20_000)
            }
            return false
        }

        /// Waits for every process (SIGKILL to all after `timeout` seconds); returns outcomes and the
        /// seconds it took.
        func wait(timeout: Double) -> (outcomes: [Outcome], seconds: Double) {
            let start = Deadline.now(), deadline = Deadline(seconds: timeout)
            while processes.contains(where: { $0.isRunning }) && !deadline.hasPassed { usleep(10_000) }
            let seconds = Deadline.now() - start
            for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
            for p in processes { p.waitUntilExit() }
            _ = group.wait(timeout: .now() + 5)
            let outcomes = processes.enumerated().map { i, p in
                Outcome(status: p.terminationStatus, output: output(i), signaled: p.terminationReason == .uncaughtSignal)
            }
            return (outcomes, seconds)
        }
    }
}

/// Runs collective-check on `worldSize` real ranks and requires every rank to exit 0 having said
/// "rank N: OK"; `expect` adds text a rank's output must hold.
func runCollectiveCheck(worldSize: Int, arguments: [String], environment: [String: String] = [:], expect: [Int: String] = [:],
                        timeout: Double = 180, file: StaticString = #filePath, line: UInt = #line) throws {
    let cluster = try LocalCluster(worldSize: worldSize)
    let started = Deadline.now()
    defer { print("world \(worldSize) \(arguments.joined(separator: " ")): \(String(format: "%.1f", Deadline.now() - started)) s") }
    let outcomes = try cluster.start("collective-check", arguments, extra: environment).wait(timeout: timeout).outcomes
    for (rank, outcome) in outcomes.enumerated() {
        XCTAssertEqual(outcome.status, 0, "world \(worldSize) rank \(rank) failed:\n\(outcome.output)", file: file, line: line)
        XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), "rank \(rank) output:\n\(outcome.output)", file: file, line: line)
        if let text = expect[rank] { XCTAssertTrue(outcome.output.contains(text), "rank \(rank) output:\n\(outcome.output)", file: file, line: line) }
    }
}
