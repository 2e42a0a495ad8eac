"""Pure values and decisions: typed values between steps, the project's errors, the promotion and retrain
policies, the rollout statistics, trigger ids and the one server-call retry policy. No I/O, no adapters."""
