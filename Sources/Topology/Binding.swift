import CNuma
import CShims
#if canImport(Glibc)
import Glibc
#endif

public extension NumaTopology {
    /// The machine's topology through libnuma (numa_max_node, numa_node_to_cpus, numa_node_size64),
    /// restricted to the CPUs this process may use (a container's cpuset), so a plan never names a CPU
    /// sched_setaffinity would refuse. When numa_available() says no, one node holding those CPUs.
    static func current() -> NumaTopology {
        let allowed = Set(currentAffinity())
        guard numaIsAvailable() else {
            return NumaTopology(nodes: [Node(id: 0, cpus: currentAffinity(), memoryMiB: 0)], numaAvailable: false)
        }
        var nodes: [Node] = []
        let mask = numa_allocate_cpumask()
        defer { numa_bitmask_free(mask) }
        for node in 0...Int(numa_max_node()) {
            guard numa_node_to_cpus(Int32(node), mask) == 0 else { continue }
            let cpus = (0..<Int(numa_num_possible_cpus())).filter { numa_bitmask_isbitset(mask, UInt32($0)) != 0 && allowed.contains($0) }
            let bytes = numa_node_size64(Int32(node), nil)
            nodes.append(Node(id: node, cpus: cpus, memoryMiB: bytes > 0 ? Int(bytes >> 20) : 0))
        }
        return NumaTopology(nodes: nodes, numaAvailable: true)
    }
}

/// CPUs this process may run on (sched_getaffinity).
public func currentAffinity() -> [Int] {
    var buffer = [Int32](repeating: 0, count: 4096)
    let n = ddp_get_affinity(&buffer, Int32(buffer.count))
    return n > 0 ? buffer[0..<Int(n)].map(Int.init) : []
}

/// The memory policy of this thread (get_mempolicy): mode (MPOL_BIND = 2) and the nodes in its mask.
public func currentMemoryPolicy() -> (mode: Int32, nodes: [Int]) {
    var mode: Int32 = 0
    var mask = [UInt](repeating: 0, count: 16)
    let maxNode = UInt(mask.count * UInt.bitWidth)
    guard get_mempolicy(&mode, &mask, maxNode, nil, 0) == 0 else { return (-1, []) }
    var nodes: [Int] = []
    for (word, bits) in mask.enumerated() {
        for bit in 0..<UInt.bitWidth where bits & (1 << UInt(bit)) != 0 { nodes.append(word * UInt.bitWidth + bit) }
    }
    return (mode, nodes)
}

public struct BindingError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Applies a placement to this process: CPU affinity (sched_setaffinity) and, when asked, memory bound
/// to the node (numa_set_membind).
public func applyPlacement(cpus: [Int], node: Int?, bindMemory: Bool) throws {
    if !cpus.isEmpty {
        let result = cpus.map(Int32.init).withUnsafeBufferPointer { ddp_set_affinity($0.baseAddress, Int32($0.count)) }
        guard result == 0 else {
            throw BindingError(message: "sched_setaffinity to CPUs \(compactList(cpus)) failed: \(String(cString: strerror(errno)))")
        }
    }
    if bindMemory, let node, numaIsAvailable() {
        let mask = numa_allocate_nodemask()
        defer { numa_bitmask_free(mask) }
        numa_bitmask_setbit(mask, UInt32(node))
        numa_set_membind(mask)
    }
}

