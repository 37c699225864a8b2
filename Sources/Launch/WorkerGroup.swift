import CShims
import Foundation
import Topology
import Rendezvous
import Support
import Transport

/// How one worker ended.
public struct WorkerExit: Sendable, CustomStringConvertible {
    public var rank: Int
    public var pid: Int32
    public var host: String
    public var status: Int32
    public var signaled: Bool
    public var lastLines: [String]
    /// When the ranks' own reports name another rank as the cause (they timed out waiting for a rank
    /// that is still alive but silent: stopped, hung), that rank, described.
    public var rootCause: String?
    public var description: String {
        let how = signaled ? "killed by signal \(status) (\(signalName(status)))" : "exit code \(status)"
        var first = "rank \(rank) (pid \(pid) on \(host)) \(how)"
        if signaled && status == SIGILL { first += illegalInstructionHint }
        return rootCause.map { "\($0); the first rank to exit was \(first)" } ?? first
    }
}

/// An illegal instruction in a rank is almost always a build for another CPU (SWIFT_DDP_TARGET_CPU, or a
/// build directory shared by hosts of different CPUs): its kernels use instructions this host lacks.
var illegalInstructionHint: String {
    let target = BuildCPU.target
    return ": an illegal instruction, usually a build for a CPU with instructions this host lacks (these binaries were "
        + "built for \(target == "native" ? "the CPU of the host that built them" : target)); rebuild on this host, or build "
        + "once with SWIFT_DDP_TARGET_CPU set to the oldest CPU among the hosts (e.g. haswell for any AVX2 CPU)"
}

func signalName(_ s: Int32) -> String {
    switch s {
    case SIGKILL: return "SIGKILL"
    case SIGTERM: return "SIGTERM"
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGINT: return "SIGINT"
    case SIGILL: return "SIGILL"
    case SIGHUP: return "SIGHUP"
    case SIGUSR1: return "SIGUSR1"
    case SIGUSR2: return "SIGUSR2"
    case SIGBUS: return "SIGBUS"
    default: return "signal \(s)"
    }
}

/// Starts the local workers, prefixes their output with "[rank N]", and supervises them: when one
/// fails, the rest get SIGTERM, then SIGKILL after the grace period, and the first failure is reported
/// as the root cause with its last output lines. Nothing is left running when `run` returns.
public final class WorkerGroup: @unchecked Sendable {
    public let spec: LaunchSpec
    let lock = NSLock()
    var processes: [Process] = []
    var tails: [[String]] = []
    /// Slots in the order their processes exited (reaped), so the root cause is the first to die,
    /// not the first in rank order among those that died of the fallout.
    var exitOrder: [Int] = []
    var readers = DispatchGroup()
    let output: @Sendable (String) -> Void
    var store: StoreServer?
    public private(set) var storePort = 0

    public init(spec: LaunchSpec, output: @escaping @Sendable (String) -> Void) {
        self.spec = spec
        self.output = output
    }

    /// Hosts the store on node 0; returns the port the ranks must use.
    func startStore() throws -> Int {
        guard spec.nodeRank == 0 else { return spec.masterPort }
        let server = try StoreServer(host: spec.masterAddress, port: spec.masterPort,
                                     identity: JobIdentity(jobID: attemptJobID(spec.jobID, restart: spec.restartCount), worldSize: spec.worldSize,
                                                           secret: spec.secret, authenticateFrames: spec.authenticateFrames),
                                     log: { [output] in output("[launcher] \($0)") })
        store = server
        return server.port
    }

    /// Runs the group to completion; returns nil when every worker exited 0, else the first failure.
    public func run() throws -> WorkerExit? {
        let port = try startStore()
        storePort = port
        let base = ProcessInfo.processInfo.environment
        // Across hosts the address names the host better than a hostname (test hosts share one).
        let listen = spec.extraEnvironment["SWIFT_DDP_LISTEN_ADDR"]
        let host = ProcessInfo.processInfo.hostName + (spec.nodes > 1 ? " (\(listen ?? spec.masterAddress))" : "")
        for local in 0..<spec.localWorkers {
            let rank = spec.nodeRank * spec.localWorkers + local
            let process = Process()
            process.executableURL = URL(fileURLWithPath: spec.command[0])
            process.arguments = Array(spec.command.dropFirst())
            process.environment = spec.environment(local: local, port: port, base: base)
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            lock.lock(); tails.append([]); lock.unlock()
            process.terminationHandler = { [self] _ in lock.lock(); exitOrder.append(local); lock.unlock() }
            do {
                try process.run()
            } catch {
                terminateAll()
                throw LaunchError("cannot start '\(spec.command[0])' for rank \(rank): \(error.localizedDescription)")
            }
            lock.lock(); processes.append(process); lock.unlock()
            output("[launcher] rank \(rank): pid \(process.processIdentifier) on \(host)")
            pump(pipe.fileHandleForReading, rank: rank, slot: local)
        }
        // Watch: the first worker to fail is the root cause; then tear the rest down.
        var failure: WorkerExit?
        while true {
            // Fresh copies (map allocates): a shared array buffer would be read here while the termination
            // handler appends to it on another thread (ThreadSanitizer reported exactly that).
            lock.lock(); let order = exitOrder.map { $0 }; let all = processes.map { $0 }; lock.unlock()
            func exit(_ slot: Int) -> WorkerExit {
                let p = all[slot]
                lock.lock(); let tail = tails[slot]; lock.unlock()
                return WorkerExit(rank: spec.nodeRank * spec.localWorkers + slot, pid: p.processIdentifier, host: host,
                                  status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal, lastLines: tail)
            }
            for slot in order where failure == nil {
                let p = all[slot]
                if p.terminationStatus != 0 || p.terminationReason == .uncaughtSignal { failure = exit(slot) }
            }
            if let first = failure, !first.signaled {
                // A rank killed by a signal is the likelier cause than one that exited on the error the
                // kill caused (its peers see the connection reset at once, and their exits may be
                // reported first): wait a moment for a signal death and name it instead.
                usleep(150_000)
                lock.lock(); let later = exitOrder.map { $0 }; lock.unlock()
                if let slot = later.first(where: { all[$0].terminationReason == .uncaughtSignal }) { failure = exit(slot) }
            }
            if failure != nil || order.count == all.count { break }
            usleep(20_000)
        }
        if var first = failure {
            first.rootCause = silentRank(blamedBy: first)
            failure = first
            terminateAll()
        }
        for p in snapshot() { p.waitUntilExit() }
        _ = readers.wait(timeout: .now() + 5)
        store?.stop()
        return failure
    }

    /// The rank the others timed out on, when its process here is still alive (a stopped or hung rank
    /// exits last, so the first exit is only its victim); read from the reports ranks leave in the store.
    func silentRank(blamedBy failure: WorkerExit) -> String? {
        guard !failure.signaled, let store else { return nil }
        // Give the other ranks' reports a moment to land (they time out at about the same time).
        usleep(200_000)
        let all = snapshot()
        let blamed = store.failureReports().values.compactMap { $0.timedOut ? $0.blamed : nil }
        for rank in Set(blamed).sorted() where rank != failure.rank {
            let slot = rank - spec.nodeRank * spec.localWorkers
            guard slot >= 0 && slot < all.count else { return "rank \(rank) (on another node) stopped responding: the others timed out waiting for it" }
            let process = all[slot]
            guard process.isRunning else { continue }
            let state = processState(process.processIdentifier)
            return "rank \(rank) (pid \(process.processIdentifier) on \(failure.host)) stopped responding (\(state)): the others timed out waiting for it"
        }
        return nil
    }

    func snapshot() -> [Process] { lock.lock(); defer { lock.unlock() }; return processes }

    /// SIGTERM to every live worker, SIGKILL to those still alive after the grace period. Each worker
    /// leads its own process group (Foundation's Process starts it so), and signals go to the whole
    /// group, so whatever a rank started goes too; a final SIGKILL sweeps groups whose leader is gone.
    public func terminateAll(signal: Int32 = SIGTERM) {
        let all = snapshot()
        let live = all.filter { $0.isRunning }
        // SIGCONT too: a stopped rank would otherwise hold its SIGTERM until the SIGKILL.
        for p in live { signalGroup(p.processIdentifier, signal); signalGroup(p.processIdentifier, SIGCONT) }
        let deadline = Deadline(seconds: spec.gracePeriod)
        while live.contains(where: { $0.isRunning }) && !deadline.hasPassed { usleep(20_000) }
        for p in all { signalGroup(p.processIdentifier, SIGKILL) }
    }

    /// Sends `signal` to every live worker's process group, and nothing else.
    public func signalAll(_ signal: Int32) {
        for p in snapshot() where p.isRunning { signalGroup(p.processIdentifier, signal) }
    }

    private func signalGroup(_ pid: Int32, _ signal: Int32) {
        if kill(-pid, signal) != 0 { kill(pid, signal) }
    }

    /// Forwards each complete line with a rank prefix; keeps the last 20 lines for the failure report.
    func pump(_ handle: FileHandle, rank: Int, slot: Int) {
        readers.enter()
        // Appended, with a header per attempt: a restart must not erase the failed attempt's log.
        let logFile = spec.logDirectory.flatMap { dir -> FileHandle? in
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let path = "\(dir)/rank\(rank).log"
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            guard let handle = FileHandle(forWritingAtPath: path) else { return nil }
            handle.seekToEndOfFile()
            handle.write(Data("=== \(spec.jobID) attempt \(spec.restartCount), rank \(rank), started \(Date()) ===\n".utf8))
            return handle
        }
        Thread.detachNewThread { [self] in
            var pending = Data()
            func emit(_ line: String) {
                output("[rank \(rank)] \(line)")
                logFile?.write(Data((line + "\n").utf8))
                lock.lock()
                tails[slot].append(line)
                if tails[slot].count > 20 { tails[slot].removeFirst() }
                lock.unlock()
            }
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending.append(data)
                while let newline = pending.firstIndex(of: 0x0A) {
                    emit(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            if !pending.isEmpty { emit(String(decoding: pending, as: UTF8.self)) }
            try? logFile?.close()
            readers.leave()
        }
    }
}

/// A process's scheduler state from /proc, in words ("stopped" for SIGSTOP).
func processState(_ pid: Int32) -> String {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")"), stat.index(close, offsetBy: 2) < stat.endIndex else { return "state unknown" }
    switch stat[stat.index(close, offsetBy: 2)] {
    case "T", "t": return "process stopped"
    case "D": return "process in uninterruptible sleep"
    case "R": return "process running"
    case "S": return "process sleeping"
    case "Z": return "process exited"
    default: return "state \(stat[stat.index(close, offsetBy: 2)])"
    }
}

public struct LaunchError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
