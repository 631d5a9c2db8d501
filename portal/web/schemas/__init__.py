"""What the API answers, one module per concept: Pydantic models (``ImagePublic``, ``JobPublic``, …).

Routes declare them as ``response_model`` so OpenAPI documents real shapes and
nothing a row holds leaks by accident. Schemas read ORM rows through
``from_attributes``; they hold no rules and import nothing from the services.
"""
