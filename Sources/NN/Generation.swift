import FoundationEssentials
import Glibc
import Tensors

public extension GPT {
    /// Appends `count` sampled tokens to `prompt` (nanoGPT's generate): the context is cropped to the
    /// block size, logits of the last position are divided by `temperature`, all but the `topK` largest
    /// are dropped (nil keeps all), and a token is drawn from the softmax.
    func generate(prompt: [Int32], count: Int, temperature: Float, topK: Int?, using rng: inout SeededRandom) throws -> [Int32] {
        precondition(!prompt.isEmpty, "generation needs a non-empty prompt")
        precondition(temperature > 0, "temperature must be positive")
        let vocabulary = configuration.vocabularySize
        var tokens = prompt
        var scaled = [Float](repeating: 0, count: vocabulary), probabilities = scaled
        for _ in 0..<count {
            let context = Array(tokens.suffix(configuration.blockSize))
            let logits = try self.logits(tokens: context, batch: 1, time: context.count)
            let last = logits.data + (context.count - 1) * vocabulary
            for v in 0..<vocabulary { scaled[v] = last[v] / temperature }
            if let topK, topK < vocabulary {
                let threshold = scaled.sorted(by: >)[max(topK, 1) - 1]
                for v in 0..<vocabulary where scaled[v] < threshold { scaled[v] = -.infinity }
            }
            softmaxRow(scaled, into: &probabilities, count: vocabulary)
            var u = rng.nextUnitFloat(), choice = vocabulary - 1
            for v in 0..<vocabulary {
                u -= probabilities[v]
                if u < 0 { choice = v; break }
            }
            tokens.append(Int32(choice))
        }
        return tokens
    }
}
