import Collectives
import NN
import Parallel
import Rendezvous

/// The process groups one rank trains with: the world, its data-parallel group (whose ranks hold the
/// same parameters and average their gradients) and, under tensor parallelism, its tensor-parallel group
/// (whose ranks hold different shards of one model replica and see the same batches).
public struct TrainingGroups {
    public let world: ProcessGroup
    public let data: ProcessGroup
    public let tensor: GroupCommunicator?
    /// Under pipeline parallelism: the ranks holding the stages of one model replica, in stage order.
    public private(set) var pipeline: ProcessGroup?
    public let layout: ParallelLayout?
    public let sequenceParallel: Bool
    /// Under expert parallelism: the ranks that split each mixture's experts (they exchange tokens) and
    /// the ranks holding the same experts (they average those experts' gradients).
    public private(set) var expert: ExpertParallelGroup?
    public private(set) var expertData: ProcessGroup?
    /// Why a group that reduces (tensor, data, expert-data) whose ranks share a host has no shared arena
    /// (ParallelGroups).
    public private(set) var arenaDeclined: String?

    /// Data parallelism only: the data-parallel group is the world.
    public init(world: ProcessGroup) {
        self.init(world: world, data: world, tensor: nil, layout: nil, sequenceParallel: false)
    }

    init(world: ProcessGroup, data: ProcessGroup, tensor: GroupCommunicator?, layout: ParallelLayout?, sequenceParallel: Bool) {
        self.world = world; self.data = data; self.tensor = tensor; self.layout = layout; self.sequenceParallel = sequenceParallel
    }

    /// Forms the config's layout over `world` (collective: every rank calls it). A layout the world
    /// cannot hold is a ConfigError naming the key.
    public init(world: ProcessGroup, config: TrainConfig) throws {
        guard config.tensorParallel > 1 || config.pipelineParallel > 1 || config.expertParallel > 1 else { self.init(world: world); return }
        let layout: ParallelLayout
        do {
            layout = try ParallelLayout(worldSize: world.worldSize, tensorParallel: config.tensorParallel, pipelineParallel: config.pipelineParallel,
                                        expertParallel: config.expertParallel, heads: config.nHead, experts: config.nExperts > 0 ? config.nExperts : nil)
        } catch let error as LayoutError {
            throw ConfigError(key: error.key, error.reason)
        }
        let groups = try ParallelGroups(layout: layout, world: world)
        let tensor = config.tensorParallel > 1 ? GroupCommunicator(group: groups.tensor) : nil
        self.init(world: world, data: groups.data, tensor: tensor, layout: layout, sequenceParallel: tensor != nil && config.sequenceParallel)
        arenaDeclined = groups.arenaDeclined
        if config.pipelineParallel > 1 { pipeline = groups.pipeline }
        if config.expertParallel > 1 {
            expert = ExpertParallelGroup(group: groups.expert)
            expertData = groups.expertData
        }
    }

    public var tensorParallelism: TensorParallelism? {
        tensor.map { TensorParallelism(communicator: $0, sequenceParallel: sequenceParallel) }
    }
}
