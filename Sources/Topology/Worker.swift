import CShims
import Foundation

/// What a rank does first, under any launcher: under ours, die with the launcher (PR_SET_PDEATHSIG,
/// and at once if it is already gone) and take the CPU and memory placement it planned
/// (SWIFT_DDP_BIND_*). Under another launcher (Slurm, mpirun, torchrun, Kubernetes), plan the placement
/// here from this rank's local rank and the ranks on its host, with the policy SWIFT_DDP_NUMA_BIND
/// (auto, node, core or none; default auto), as our launcher would.
public func prepareWorker(localRank: Int, localWorldSize: Int, environment env: [String: String] = ProcessInfo.processInfo.environment) throws {
    if let text = env["SWIFT_DDP_LAUNCHER_PID"], let pid = Int32(text) {
        _ = ddp_set_parent_death_signal(SIGKILL)
        if getppid() != pid { kill(getpid(), SIGKILL) }
        return try applyPlacementFromEnvironment(env)
    }
    let name = env["SWIFT_DDP_NUMA_BIND"].flatMap { $0.isEmpty ? nil : $0 } ?? "auto"
    guard let policy = BindingPolicy(rawValue: name) else {
        throw BindingError(message: "SWIFT_DDP_NUMA_BIND '\(name)' must be auto, node, core or none")
    }
    guard policy != .none, localRank < localWorldSize else { return }
    let placement = planBinding(NumaTopology.current(), localRanks: localWorldSize, policy: policy)[localRank]
    guard !placement.cpus.isEmpty else { return }
    try applyPlacement(cpus: placement.cpus, node: placement.node, bindMemory: placement.bindMemory)
}
