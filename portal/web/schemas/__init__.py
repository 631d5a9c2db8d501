"""What the API answers, one module per concept: Pydantic models (``ImagePublic``, ``JobPublic``, …).

Routes declare them as ``response_model`` so OpenAPI documents real shapes and
nothing a row holds leaks by accident. Schemas read ORM rows through
``from_attributes``; they hold no rules. The one import from the services is a request item type the
service itself validates with (``submissions.PrelabelItem``), so the two can never disagree.
"""
