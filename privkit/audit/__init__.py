"""Audits of unlearned models: checks an auditor can run against a claim that data was forgotten."""
