"""Knowledge distillation: a student learns from a loaded teacher's softened outputs.
(Issue 10; being built.)"""
