"""loraflow inside the client libraries its users script with.

- ``loraflow.integrations.llm_plugin``: simonw's ``llm`` (registered through llm's plugin entry
  point: ``pip install loraflow llm`` and ``llm models`` lists loraflow's models);
- ``loraflow.integrations.distilabel``: a distilabel ``AsyncLLM`` (``LoraflowLLM``), with
  offline batch generation on loraflow's batch jobs;
- ``loraflow.integrations.aixplain``: a model handle with aiXplain's verbs (``run``,
  ``run_async``/``poll``/``sync_poll``, ``run_stream``, ``check_finetune_status``).

Each talks to models in this process through the SDK, or to a remote ``loraflow serve`` when
``LORAFLOW_BASE_URL`` is set (``loraflow.integrations.client``).
"""
