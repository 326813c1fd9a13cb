"""TaskSet lives in sip/tasks.py, where the transport layer can use it too (sip/ never imports
gateway/). This name stays only for the modules the proxy split is rewiring (gateway/proxy.py,
dispatch.py, app.py): once they import sip.tasks, this file goes."""

from sip.tasks import TaskSet as TaskSet

__all__ = ["TaskSet"]
