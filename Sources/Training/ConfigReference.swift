import FoundationEssentials
import Glibc
import Support

// The config keys a user can set, with their meaning: `ddp-train config` prints them with defaults, an
// unknown key is answered with the nearest known one, and a test requires every key to be described.

extension TrainConfig {
    /// Every key and what it means, in the order a reader meets them.
    public static let keyDescriptions: [(key: String, meaning: String)] = [
        ("model", "gpt (character-level transformer) or mlp (MNIST classifier)"),
        ("dataset", "shakespeare (data/tinyshakespeare.txt), text (any UTF-8 file, data_path) or mnist (the 10k test set: 8,000 train, 2,000 held out)"),
        ("data_dir", "directory with the data files (scripts/get-data.sh fills data/)"),
        ("data_path", "dataset text: the file to train on (first 90 % train, the rest validation)"),
        ("out_dir", "where checkpoints go (ckpt.safetensors)"),
        ("seed", "initialisation and batch seed: the same seed and world size give the same losses"),
        ("n_layer", "GPT: transformer blocks"),
        ("n_head", "GPT: attention heads (must divide n_embd)"),
        ("n_embd", "GPT: embedding width"),
        ("block_size", "GPT: context length in characters"),
        ("dropout", "GPT: only 0 (the CPU recipe trains without dropout)"),
        ("bias", "GPT: biases in Linear and LayerNorm layers"),
        ("hidden", "MLP: hidden layer width"),
        ("activation", "MLP: relu or gelu"),
        ("batch_size", "sequences (GPT) or samples (MLP) per micro-batch, per rank"),
        ("grad_accum", "micro-batches per optimizer step (gradient accumulation)"),
        ("max_iters", "optimizer steps to train"),
        ("epochs", "MLP: train this many epochs instead of max_iters (null: use max_iters)"),
        ("optimizer", "adamw or sgd"),
        ("learning_rate", "peak learning rate"),
        ("min_lr", "learning rate at the end of the cosine decay"),
        ("warmup_iters", "linear warm-up steps"),
        ("lr_decay_iters", "step at which the cosine decay reaches min_lr"),
        ("decay_lr", "false: constant learning rate"),
        ("beta1", "AdamW first-moment decay"),
        ("beta2", "AdamW second-moment decay"),
        ("weight_decay", "AdamW decoupled weight decay (matrices only)"),
        ("momentum", "SGD momentum"),
        ("grad_clip", "clip the global gradient norm to this (0: off)"),
        ("on_nonfinite", "a NaN or infinite gradient norm: stop (default) or skip the step"),
        ("eval_interval", "evaluate every this many steps (and at the end)"),
        ("eval_iters", "batches per evaluation"),
        ("log_interval", "print a progress line every this many steps"),
        ("gelu", "the GPT MLP's GELU: exact (erf, nanoGPT's nn.GELU(), the default) or tanh (GPT-2's approximation)"),
        ("checkpoint_format", "single: one safetensors file gathered by rank 0; sharded: a directory where every rank writes its own pieces (ddp-train consolidate makes the single file)"),
        ("checkpoint_interval", "write a checkpoint every this many steps (0: only at the end)"),
        ("allreduce_algorithm", "ring, tree, halving-doubling or auto (by message size)"),
        ("bucket_mb", "gradient bucket size in MiB: buckets are averaged while backward runs"),
        ("verify_replicas", "check after every step that all ranks hold bitwise-identical parameters"),
        ("zero_stage", "1: optimizer state sharded across data-parallel ranks (ZeRO-1); 2: gradients too (ZeRO-2); 3: parameters too, gathered per unit (ZeRO-3, FSDP); 0: off"),
        ("reshard_after_forward", "with zero_stage 3: release a unit's gathered parameters after its forward and gather them again for backward (false: keep them)"),
        ("gradient_compression", "bf16: gradients travel as bfloat16; none: float32"),
        ("allreduce_tuning", "an alpha-beta table from allreduce-bench --tuning for auto (SWIFT_DDP_TUNING also sets it)"),
        ("parallel", "manual (the layout keys below) or auto: the planner (ddp-train plan) picks the fastest layout that fits memory_per_rank_mb and logs why; batch_size x grad_accum is then the global batch"),
        ("memory_per_rank_mb", "with parallel auto: memory budget per rank in MiB (0: physical memory / ranks on this host)"),
        ("tensor_parallel", "split each transformer block across this many ranks (Megatron; divides n_head and the world size)"),
        ("sequence_parallel", "with tensor_parallel: LayerNorms and residuals on 1/tensor_parallel of the rows"),
        ("pipeline_parallel", "split the GPT's blocks into this many pipeline stages, one per rank (divides the world size)"),
        ("pipeline_schedule", "gpipe, 1f1b, interleaved or zb-h1 (zero bubble; see ddp-train schedule)"),
        ("microbatches", "with pipeline_parallel: micro-batches of batch_size sequences per pipeline pass"),
        ("virtual_stages", "with the interleaved schedule: chunks of layers per rank (Megatron's virtual pipeline size)"),
        ("pipeline_timeline", "with pipeline_parallel: an SVG file of the last step's measured per-rank timeline (written by rank 0)"),
        ("n_experts", "GPT: experts per mixture-of-experts MLP (0: dense model)"),
        ("moe_top_k", "experts per token: 1 (Switch) or 2 (GShard, gates renormalised)"),
        ("capacity_factor", "places per expert = ceil(top_k x tokens / n_experts x factor) over one rank's micro-batch; over it a choice is dropped (the token keeps its residual); 0: dropless"),
        ("moe_aux_loss_coef", "Switch load-balancing loss α·E·Σ f_i·P_i added to the training loss (0: off)"),
        ("moe_every", "every moe_every-th block's MLP is a mixture of experts (2: every other block)"),
        ("expert_parallel", "split each mixture's experts across this many data-parallel ranks (all-to-all dispatch and combine; divides n_experts and the data-parallel size; under tensor_parallel the tensor-parallel group splits them instead)"),
    ]

    /// All known keys.
    public static var knownKeys: [String] { CodingKeys.allCases.map(\.rawValue) }

    /// "key = default  meaning" lines for `ddp-train config`.
    public static func reference() -> [String] {
        let defaults = (try? JSONValue.parse(TrainConfig().jsonString()))?.objectValue ?? [:]
        let width = keyDescriptions.map(\.key.count).max() ?? 0
        return keyDescriptions.map { entry in
            let value = defaults[entry.key]?.serialized() ?? "null"
            return entry.key.padded(to: width) + " = " + value.padded(to: 14)
                + "  " + entry.meaning
        }
    }

    /// The known key nearest to `key` (edit distance at most 3, or the same letters without separators).
    public static func suggestion(for key: String) -> String? {
        let plain = { (s: String) in s.lowercased().filter { $0.isLetter || $0.isNumber } }
        if let same = knownKeys.first(where: { plain($0) == plain(key) }) { return same }
        let scored = knownKeys.map { ($0, editDistance($0, key.lowercased())) }.min { $0.1 < $1.1 }
        return scored.flatMap { $0.1 <= 3 ? $0.0 : nil }
    }
}

/// Levenshtein distance (keys are short).
func editDistance(_ a: String, _ b: String) -> Int {
    let x = Array(a), y = Array(b)
    guard !x.isEmpty, !y.isEmpty else { return max(x.count, y.count) }
    var row = Array(0...y.count)
    for i in 1...x.count {
        var diagonal = row[0]
        row[0] = i
        for j in 1...y.count {
            let above = row[j]
            row[j] = min(above + 1, row[j - 1] + 1, diagonal + (x[i - 1] == y[j - 1] ? 0 : 1))
            diagonal = above
        }
    }
    return row[y.count]
}
