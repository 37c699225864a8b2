import Foundation
import Transport

/// torchrun's WorkerState, for the group of ranks an agent runs on this node.
public enum WorkerState: String, Sendable {
    /// Not started yet (or between a failure and the restart).
    case initial = "INIT"
    /// Running; no rank has failed.
    case healthy = "HEALTHY"
    /// A rank failed; the others are being stopped.
    case unhealthy = "UNHEALTHY"
    /// Stopped from outside (a termination signal).
    case stopped = "STOPPED"
    case succeeded = "SUCCEEDED"
    /// Failed and no restart is left.
    case failed = "FAILED"
}

/// The launcher's logic as a library (torchrun's elastic agent): it checks the store port, runs the
/// group, and restarts it after a failure up to `spec.maxRestarts` times, reporting through `log`. It
/// never exits the process: `run` returns the outcome, the executable chooses the exit code.
public final class LaunchAgent: @unchecked Sendable {
    public private(set) var spec: LaunchSpec
    let log: @Sendable (String) -> Void
    private let lock = NSLock()
    private var group: WorkerGroup?
    private var stateValue = WorkerState.initial

    public init(spec: LaunchSpec, log: @escaping @Sendable (String) -> Void) {
        self.spec = spec; self.log = log
    }

    public var state: WorkerState { lock.lock(); defer { lock.unlock() }; return stateValue }
    /// The group running now (a restart replaces it), for signal forwarding.
    public var currentGroup: WorkerGroup? { lock.lock(); defer { lock.unlock() }; return group }

    func set(_ state: WorkerState, group: WorkerGroup? = nil) {
        lock.lock(); stateValue = state; if let group { self.group = group }; lock.unlock()
    }

    /// A busy store port is a bad option: found before anything starts (node 0 with a fixed port).
    public func checkStorePort() throws {
        guard spec.nodeRank == 0 && spec.masterPort != 0 else { return }
        do { try Listener.checkBindable(host: spec.masterAddress, port: spec.masterPort) } catch let error as TransportError {
            throw LaunchError("--master-port \(spec.masterPort): the store cannot listen on \(spec.masterAddress):\(spec.masterPort) (\(error)); pick another port, or 0 for a free one")
        }
    }

    /// Runs the group until it succeeds or fails with no restart left; returns the last failure, or nil.
    public func run() throws -> WorkerExit? {
        for attempt in 0...spec.maxRestarts {
            spec.restartCount = attempt
            // MASTER_PORT for the program's own rendezvous: one node picks a free port per attempt; several
            // nodes must agree without talking, so it is the store's port + 1 there.
            spec.programPort = spec.nodes > 1 ? spec.masterPort + 1 : try freePort(host: spec.masterAddress)
            let group = WorkerGroup(spec: spec, output: log)
            set(.healthy, group: group)
            log("[launcher] starting \(spec.localWorkers) rank(s) on node \(spec.nodeRank) of \(spec.nodes)"
                + (attempt > 0 ? " (restart \(attempt) of \(spec.maxRestarts))" : "") + ": \(spec.command.joined(separator: " "))")
            guard let failure = try group.run() else {
                set(.succeeded)
                log("[launcher] all \(spec.localWorkers) rank(s) finished" + (attempt > 0 ? " after \(attempt) restart(s)" : ""))
                return nil
            }
            set(.unhealthy)
            log("[launcher] FAILED: \(failure); stopped the other ranks. Last lines of rank \(failure.rank):")
            for line in failure.lastLines { log("[launcher]   | \(line)") }
            if attempt < spec.maxRestarts {
                set(.initial)
                log("[launcher] restarting the group (\(attempt + 1) of \(spec.maxRestarts)); trainers resume from their last checkpoint")
                continue
            }
            set(.failed)
            if spec.maxRestarts > 0 { log("[launcher] giving up: the group failed \(spec.maxRestarts + 1) times") }
            return failure
        }
        return nil
    }

    /// A termination signal: the group is stopped (the caller exits).
    public func stop(signal: Int32) {
        set(.stopped)
        currentGroup?.terminateAll(signal: signal)
    }
}

/// A port nothing listens on now (the kernel's choice, released at once).
public func freePort(host: String) throws -> Int {
    let listener = try Listener(host: host, port: 0)
    defer { listener.close() }
    return listener.port
}

/// Inside a Kubeflow PyTorchJob pod (KUBERNETES_SERVICE_HOST set, and the operator's WORLD_SIZE, RANK,
/// MASTER_ADDR, MASTER_PORT): the pods are the launcher's nodes. nil elsewhere; a partial set is an
/// error naming what is missing.
public func kubeflowPod(_ env: [String: String]) throws -> (pods: Int, index: Int, masterAddress: String, masterPort: Int)? {
    guard env["KUBERNETES_SERVICE_HOST"] != nil, env["SWIFT_DDP_STORE_PORT"] == nil else { return nil }
    let names = ["WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"]
    let present = names.filter { !(env[$0] ?? "").isEmpty }
    guard !present.isEmpty else { return nil }
    guard present.count == names.count else {
        throw LaunchError("in a Kubernetes pod with \(present.joined(separator: ", ")) set, \(names.filter { !present.contains($0) }.joined(separator: ", ")) is missing (a PyTorchJob sets all four)")
    }
    guard let pods = Int(env["WORLD_SIZE"]!), pods >= 1, let index = Int(env["RANK"]!), (0..<pods).contains(index),
          let port = Int(env["MASTER_PORT"]!), (1...65534).contains(port) else {
        throw LaunchError("Kubeflow variables WORLD_SIZE=\(env["WORLD_SIZE"]!) RANK=\(env["RANK"]!) MASTER_PORT=\(env["MASTER_PORT"]!) are not a pod count, an index below it and a port")
    }
    return (pods, index, env["MASTER_ADDR"]!, port)
}
