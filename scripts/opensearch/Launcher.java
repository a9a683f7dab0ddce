// Runs one OpenSearch node from jars on the classpath. The distribution loads its modules (HTTP and
// transport over Netty, the common analyzers) from a folder; here they are on the classpath, and
// Node's protected constructor takes their plugin classes instead.
//
//   java -cp 'libs/*:classes' Launcher key=value...
//
// Every argument is a node setting (path.home, http.port, ...); scripts/opensearch/node names
// them. The node runs until SIGTERM or SIGINT, then closes (flushing its shards) and exits.

import java.util.Arrays;
import java.util.Collections;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

public final class Launcher {
    private static final class PluginNode extends Node {
        PluginNode(Environment environment) {
            super(environment, Arrays.asList(Netty4Plugin.class, CommonAnalysisPlugin.class), true);
        }
    }

    public static void main(String[] args) throws Exception {
        Settings.Builder settings = Settings.builder();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                System.err.println("Launcher: arguments are key=value settings, not " + arg);
                System.exit(2);
            }
            settings.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings.build(), Collections.emptyMap(), null, () -> "node");
        Node node = new PluginNode(environment);
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "node-close"));
        node.start();
        closed.await();
    }
}
