"""``POST /invocations``: SageMaker's dispatching route."""
