"""The flowcore Gradio app: UI pieces (one module per tab) over one service layer.

``services.DemoService`` owns the flow engine, its adapters and every model call
(``flowcore.online.rollouts.explore_flows`` explores the flow on screen; ``files`` reads runs,
adapter folders and result tables); the tab modules only lay out widgets and
turn the service's results into text (``render``). ``ui.build_app(service)``
assembles the tabs; ``app.py`` at the repository root only parses flags, loads
the service and launches.
"""
