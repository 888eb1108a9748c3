"""placeholder until the vllm backend lands"""
