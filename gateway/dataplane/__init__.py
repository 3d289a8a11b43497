"""The native data plane: HAProxy routes passthrough calls by the model name in the body;
the gateway writes its configuration, supervises it and programs it live (Runtime API)."""
